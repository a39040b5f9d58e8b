"""Preference strength from a reward-model ensemble (Secrets of RLHF Part II, arXiv:2401.06080):
for every pair, the members' mean reward gap r(chosen) - r(rejected) and the share of members that
agree with the label. Strongly negative pairs are likely mislabeled; near-zero pairs are ambiguous."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alignlab.data import load_records


def pair_strength(source, records) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) mean reward gap over members and (N,) share of members preferring the chosen response."""
    prompts = [r.prompt for r in records] * 2
    responses = [r.chosen for r in records] + [r.rejected for r in records]
    members, _ = source.outputs(prompts, responses)  # (2N, K)
    N = len(records)
    gaps = members[:N] - members[N:]  # (N, K)
    return gaps.mean(1), (gaps > 0).float().mean(1)


def write_strength(path_in, path_out, source, *, show: int = 10, format: str = "auto") -> dict:
    """Adds `strength` (mean reward gap) and `vote` (share of members agreeing with the label)
    to every row of a pairwise jsonl file; returns a summary with the likeliest mislabeled pairs."""
    result = load_records(path_in, format=format)
    records = result.records
    strength, vote = pair_strength(source, records)
    out = Path(path_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for rec, s, v in zip(records, strength.tolist(), vote.tolist()):
            row = {"prompt": rec.prompt, "chosen": rec.chosen, "rejected": rec.rejected, "strength": s, "vote": v}
            if rec.margin is not None:
                row["margin"] = rec.margin
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    order = strength.argsort().tolist()
    suspects = [{"where": f"{records[i].meta.get('file', path_in)}, {records[i].meta.get('location', f'record {i}')}",
                 "strength": float(strength[i]), "vote": float(vote[i]), "chosen": records[i].chosen[:80],
                 "rejected": records[i].rejected[:80]} for i in order[:show] if strength[i] < 0]
    return {"pairs": len(records), "mean_strength": float(strength.mean()),
            "negative_share": float((strength < 0).float().mean()),
            "unanimous_share": float(((vote == 0) | (vote == 1)).float().mean()),
            "likely_mislabeled": suspects, "output": str(out)}
