"""`alignlab data inspect FILE`: what a dataset holds before training on it — format, record
types, length percentiles, how many examples exceed max_length, duplicates, empty and invalid
rows. Invalid rows are skipped and counted here, never fatal."""

from __future__ import annotations

import json
import math
from collections import Counter

from alignlab.data.loaders import SAME_PAIR, count_pair_issues, load_records
from alignlab.data.pairing import to_pairs
from alignlab.data.records import BinaryRecord, CritiqueRecord, PairwiseRecord
from alignlab.data.report import DataReport
from alignlab.data.tokenize import content_chars, keep_end, prompt_encoder, prompt_text

PERCENTILES = (50, 90, 99)
SKIPPED = "skipped invalid: "


def _responses(record) -> list[str]:
    if isinstance(record, PairwiseRecord):
        return [record.chosen, record.rejected]
    if isinstance(record, (BinaryRecord, CritiqueRecord)):
        return [record.response] + ([record.refinement] if getattr(record, "refinement", None) else [])
    return list(record.responses)


def percentiles(values: list[int]) -> dict[str, int]:
    """Nearest-rank percentiles p50/p90/p99 and the max ({} for no values)."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {f"p{p}": ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] for p in PERCENTILES}
    out["max"] = ordered[-1]
    return out


def _key(record) -> str:
    return json.dumps([type(record).__name__, record.prompt, _responses(record),
                       getattr(record, "desirable", None), getattr(record, "critique", None)], sort_keys=True)


def inspect_dataset(path, tokenizer=None, *, max_length: int = 1024, format: str = "auto",
                    columns: dict | None = None) -> dict:
    """Summary of a dataset as a dict (see `render_inspect`). Lengths are in tokens as training
    would count them (chat template, end-of-turn token) or in characters without a tokenizer."""
    loaded = load_records(path, format=format, columns=columns, skip_invalid=True, to_pairs=False)
    records, report = loaded.records, loaded.report
    encoder = prompt_encoder(tokenizer) if tokenizer is not None else None
    capped = 0
    if encoder:
        # a text of more than `cap` characters is over max_length for certain: only its first (a
        # prompt's last) `cap` characters are tokenized, which still counts more than max_length
        # tokens, so a hostile 50 MB line is never tokenized whole
        cap = (max_length + 1) * encoder.max_token_chars

        def prompt_len(prompt) -> int:
            nonlocal capped
            capped += content_chars(prompt) > cap
            return len(encoder.prompt(keep_end(prompt, cap)))

        def response_len(text: str) -> int:
            nonlocal capped
            capped += len(text) > cap
            return len(encoder.response(text[:cap]))
    else:
        prompt_len, response_len = (lambda p: len(prompt_text(p))), len
    prompts, responses, over = [], [], 0
    for record in records:
        p, rs = prompt_len(record.prompt), [response_len(t) for t in _responses(record)]
        prompts.append(p)
        responses.extend(rs)
        over += p + max(rs, default=0) > max_length
    keys = Counter(_key(r) for r in records)
    invalid = {k[len(SKIPPED):]: n for k, n in report.counts.items() if k.startswith(SKIPPED)}
    pairwise = sum(isinstance(r, PairwiseRecord) for r in records)
    result = {
        "file": str(path),
        "format": loaded.format,
        "records": len(records),
        "by_type": dict(Counter(type(r).__name__ for r in records)),
        "invalid": sum(invalid.values()),
        "invalid_by_reason": invalid,
        "invalid_examples": [e for k, es in report.examples.items() if k.startswith(SKIPPED) for e in es][:3],
        "units": "tokens" if encoder else "characters",
        "prompt_length": percentiles(prompts),
        "response_length": percentiles(responses),
        "max_length": max_length,
        "over_max_length": over,
        "lengths_capped": capped,
        "duplicates": sum(n - 1 for n in keys.values()),
        "empty": sum(n for k, n in invalid.items() if k.startswith("empty")),
        "pairwise": pairwise,
        "chosen_equals_rejected": report[SAME_PAIR],
        "report": report.lines(),
    }
    if any(not isinstance(r, (PairwiseRecord, BinaryRecord, CritiqueRecord)) for r in records):
        converted = DataReport()
        pairs = to_pairs(records, "best_vs_worst", 0, converted)
        count_pair_issues(pairs, converted)
        result["pairs_best_vs_worst"] = sum(isinstance(r, PairwiseRecord) for r in pairs)
        result["pairing_report"] = converted.lines()
    return result


def render_inspect(result: dict) -> str:
    """A plain-text table of `inspect_dataset`'s result."""
    types = ", ".join(f"{n} {t}" for t, n in result["by_type"].items())
    lines = [f"dataset: {result['file']}",
             f"  format                {result['format']}",
             f"  records               {result['records']}" + (f" ({types})" if types else ""),
             f"  invalid rows skipped  {result['invalid']}"]
    lines += [f"      {reason}: {n}" for reason, n in result["invalid_by_reason"].items()]
    lines += [f"      e.g. {e}" for e in result["invalid_examples"]]
    if "pairs_best_vs_worst" in result:
        lines.append(f"  pairs (best_vs_worst) {result['pairs_best_vs_worst']}")
    columns = ("p50", "p90", "p99", "max")
    lines += ["", f"  {'length in ' + result['units']:<22}" + "".join(f"{c:>8}" for c in columns)]
    for name in ("prompt", "response"):
        stats = result[f"{name}_length"]
        lines.append(f"  {name:<22}" + "".join(f"{stats.get(c, '-'):>8}" for c in columns))
    share = (f" ({100 * result['chosen_equals_rejected'] / result['pairwise']:.1f}% of pairs)"
             if result["pairwise"] else "")
    lines += ["",
              f"  longer than max_length {result['max_length']} {result['units']} (prompt + longest response): "
              f"{result['over_max_length']}"
              + (f" ({result['lengths_capped']} text(s) too long to count in full: over max_length by their "
                 "characters alone)" if result.get("lengths_capped") else ""),
              f"  duplicate records (kept): {result['duplicates']}",
              f"  empty prompts/responses (skipped): {result['empty']}"]
    if result["pairwise"]:
        lines.append(f"  chosen == rejected (no signal): {result['chosen_equals_rejected']}{share}")
    lines += ["", "load report:"] + [f"  {line}" for line in result["report"]]
    if result.get("pairing_report"):
        lines += ["pairing report (best_vs_worst):"] + [f"  {line}" for line in result["pairing_report"]]
    return "\n".join(lines)
