"""Evaluation: metrics (win-rate, KL estimate, bootstrap intervals) and plots (`alignlab.eval.plots`,
imported on demand because it needs matplotlib). See docs/lab.md."""

from alignlab.eval.metrics import bootstrap_ci, sequence_kl, win_outcomes, win_rate, win_rate_ci

__all__ = ["bootstrap_ci", "sequence_kl", "win_outcomes", "win_rate", "win_rate_ci"]
