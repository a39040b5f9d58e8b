"""`alignlab eval rm`: how good a reward model is on held-out pairs — accuracy overall and per
subset (RewardBench style), calibration of its Bradley-Terry probabilities, length bias, and the
disagreement of ensemble members."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alignlab.eval.calibration import expected_calibration_error, plot_reliability, reliability_bins


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denom = (x.norm() * y.norm()).item()
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def evaluate_pairs(source, records, *, output_dir=None) -> dict:
    """source: a RewardModelSource (or any source with `outputs`); records: PairwiseRecords."""
    prompts = [r.prompt for r in records] * 2
    responses = [r.chosen for r in records] + [r.rejected for r in records]
    member_rewards, _ = source.outputs(prompts, responses)  # (2N, K)
    N = len(records)
    final = source.score(prompts, responses) if member_rewards.shape[1] > 1 else member_rewards[:, 0]
    diff = final[:N] - final[N:]
    correct = (diff > 0).float()
    subsets: dict[str, list[float]] = {}
    for rec, ok in zip(records, correct.tolist()):
        key = rec.meta.get("subset") or rec.meta.get("category")
        if key is not None:
            subsets.setdefault(str(key), []).append(ok)
    probs = torch.sigmoid(diff)
    # calibration of P(chosen > rejected) against the observed label; chosen is always the
    # observed winner, so mirror each pair to cover both sides of 0.5.
    p_all, y_all = torch.cat([probs, 1 - probs]), torch.cat([torch.ones(N), torch.zeros(N)])
    table = reliability_bins(p_all, y_all)
    lengths = torch.tensor([len(source.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in responses], dtype=torch.float)
    result = {
        "pairs": N,
        "accuracy": float(correct.mean()),
        "accuracy_by_subset": {k: sum(v) / len(v) for k, v in sorted(subsets.items())},
        "ece": expected_calibration_error(p_all, y_all),
        "reliability": table,
        "length_reward_correlation": _pearson(final, lengths),
        "chosen_longer_share": float((lengths[:N] > lengths[N:]).float().mean()),
        "truncated": getattr(source, "truncated", 0),
    }
    if member_rewards.shape[1] > 1:
        member_diff = member_rewards[:N] - member_rewards[N:]  # (N, K)
        votes = (member_diff > 0).float().mean(1)
        result["ensemble"] = {
            "members": member_rewards.shape[1],
            "member_accuracy": (member_diff > 0).float().mean(0).tolist(),
            "mean_reward_std": float(member_rewards.std(1, unbiased=False).mean()),
            "split_vote_share": float(((votes > 0) & (votes < 1)).float().mean()),
        }
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        plot_reliability(table, out / "reliability.png")
        (out / "rm_eval.json").write_text(json.dumps(result, indent=1))
    return result
