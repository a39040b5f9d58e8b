"""Calibration of preference probabilities: expected calibration error and reliability bins."""

from __future__ import annotations

import torch
from torch import Tensor


def reliability_bins(probs: Tensor, outcomes: Tensor, bins: int = 10) -> list[dict]:
    """Equal-width bins of predicted P(first preferred): per bin the count, mean predicted
    probability (confidence) and observed frequency of the first response being preferred."""
    probs, outcomes = torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(outcomes, dtype=torch.float64)
    if probs.shape != outcomes.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and outcomes {tuple(outcomes.shape)} differ")
    which = torch.clamp((probs * bins).long(), max=bins - 1)  # p = 1.0 falls in the last bin
    out = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        out.append({"low": b / bins, "high": (b + 1) / bins, "count": n,
                    "confidence": float(probs[sel].mean()) if n else None,
                    "frequency": float(outcomes[sel].mean()) if n else None})
    return out


def expected_calibration_error(probs: Tensor, outcomes: Tensor, bins: int = 10) -> float:
    """ECE = sum_b (n_b / N) |mean(p in b) - mean(y in b)| over equal-width bins of p."""
    table = reliability_bins(probs, outcomes, bins)
    total = sum(b["count"] for b in table)
    if total == 0:
        raise ValueError("no predictions to calibrate")
    return sum(b["count"] / total * abs(b["confidence"] - b["frequency"]) for b in table if b["count"])


def plot_reliability(table: list[dict], path, title: str = "reward model calibration") -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4.5))  # no pyplot: the global backend is left alone
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    used = [b for b in table if b["count"]]
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    ax.bar([b["confidence"] for b in used], [b["frequency"] for b in used], width=0.08, alpha=0.7, label="observed")
    ax.set_xlabel("predicted P(chosen preferred)")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
