"""Rated and ranked responses -> one preference pair per prompt.

- `best_vs_worst`: the best response against the worst; margin = score gap (ratings) or rank gap
  (rankings). Ties go to the earlier response.
- `best_vs_random`: the best against a random response rated strictly lower (UltraFeedback-
  binarized, HuggingFaceH4/ultrafeedback_binarized, which drew among all the others; we exclude
  responses tied with the best because such a pair states no preference). Seeded per record, so
  the pairs do not change when other rows are skipped.

A rating's score is its "overall" attribute, else the mean of its attributes. A prompt whose
responses all score the same, or that has fewer than two responses, yields no pair (counted).
"""

from __future__ import annotations

import random

from alignlab.data.errors import record_where
from alignlab.data.records import PairwiseRecord, RankingRecord, RatingRecord
from alignlab.data.report import DataReport

PAIRINGS = ("best_vs_worst", "best_vs_random")


def overall(rating: dict[str, float]) -> float:
    return rating["overall"] if "overall" in rating else sum(rating.values()) / len(rating)


def _pick(scores: list[float], rule: str, rng: random.Random) -> tuple[int, int] | str:
    """(best index, rejected index), or the reason there is no pair."""
    if len(scores) < 2:
        return "no pair: fewer than two responses"
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    lower = [i for i in range(len(scores)) if scores[i] < scores[best]]
    if not lower:
        return "no pair: all responses rated equal"
    if rule == "best_vs_worst":
        return best, min(lower, key=lambda i: (scores[i], i))
    return best, rng.choice(lower)


def record_to_pair(record: RatingRecord | RankingRecord, rule: str, rng: random.Random) -> PairwiseRecord | str:
    if isinstance(record, RatingRecord):
        scores = [overall(r) for r in record.ratings]
    else:  # best first: score = minus the rank
        scores = [-float(i) for i in range(len(record.responses))]
    picked = _pick(scores, rule, rng)
    if isinstance(picked, str):
        return picked
    best, other = picked
    return PairwiseRecord(prompt=record.prompt, chosen=record.responses[best], rejected=record.responses[other],
                          margin=scores[best] - scores[other], annotator=record.annotator, meta=dict(record.meta))


def to_pairs(records: list, rule: str, seed: int, report: DataReport) -> list:
    """Replace ratings and rankings by pairs (other records pass through), counting the outcome."""
    if rule not in PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {rule!r}")
    out = []
    for index, record in enumerate(records):
        if not isinstance(record, (RatingRecord, RankingRecord)):
            out.append(record)
            continue
        kind = "ratings" if isinstance(record, RatingRecord) else "rankings"
        pair = record_to_pair(record, rule, random.Random(f"{seed}:{index}"))
        if isinstance(pair, str):
            report.add(pair, example=record_where(record))
        else:
            report.add(f"converted {kind} to pairs ({rule})")
            out.append(pair)
    return out
