"""Evaluation metrics: win-rate, the sample-based KL estimate, bootstrap confidence intervals.

All take tensors or plain lists and return Python floats, so results go straight into JSON.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch

Values = Union[torch.Tensor, Sequence[float]]


def _as_1d(values: Values, name: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t


def _pair(a: Values, b: Values, names: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_1d(a, names[0]), _as_1d(b, names[1])
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same length, got {len(a)} and {len(b)}")
    if len(a) == 0:
        raise ValueError(f"{names[0]} and {names[1]} are empty")
    return a, b


def win_outcomes(scores_a: Values, scores_b: Values) -> torch.Tensor:
    """Per-comparison outcome for a: 1 if a_i > b_i, 0.5 on a tie, 0 if a_i < b_i; (N,) float64."""
    a, b = _pair(scores_a, scores_b, ("scores_a", "scores_b"))
    return (a > b).double() + 0.5 * (a == b).double()


def win_rate(scores_a: Values, scores_b: Values) -> float:
    """mean_i 1[a_i > b_i] + 1/2 1[a_i = b_i]: how often a beats b when the two are compared
    pairwise (row i of each scored by the same judge, e.g. the same prompt), ties counting half."""
    return float(win_outcomes(scores_a, scores_b).mean())


def sequence_kl(policy_logps: Values, reference_logps: Values) -> float:
    """Monte-Carlo estimate of KL(pi || pi_ref) from responses y_i ~ pi(.|x_i):

        KL ~= mean_i [log pi(y_i|x_i) - log pi_ref(y_i|x_i)]

    `policy_logps` / `reference_logps`: (N,) summed response log-probs of the *policy's own samples*
    under each model (on samples from another distribution this is not a KL). Unbiased but noisy,
    and single estimates can be negative (Schulman, "Approximating KL Divergence", 2020).
    """
    policy, reference = _pair(policy_logps, reference_logps, ("policy_logps", "reference_logps"))
    return float((policy - reference).mean())


def bootstrap_ci(values: Values, fn: Callable[[torch.Tensor], torch.Tensor | float] = torch.mean,
                 n: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap (Efron & Tibshirani 1993, ch. 13) (1 - alpha) interval of fn(values).

    Draws n resamples of len(values) with replacement (own seeded generator), applies `fn` to
    each (a float64 tensor in, a scalar out) and returns the alpha/2 and 1 - alpha/2 quantiles.
    """
    x = _as_1d(values, "values")
    if len(x) == 0:
        raise ValueError("bootstrap_ci: values is empty")
    if n < 1 or not 0 < alpha < 1:
        raise ValueError(f"bootstrap_ci: need n >= 1 and 0 < alpha < 1, got n={n}, alpha={alpha}")
    generator = torch.Generator().manual_seed(seed)
    resamples = x[torch.randint(0, len(x), (n, len(x)), generator=generator)]  # (n, N)
    if fn is torch.mean:  # the common case, vectorised
        stats = resamples.mean(dim=1)
    else:
        stats = torch.tensor([float(fn(row)) for row in resamples], dtype=torch.float64)
    low, high = torch.quantile(stats, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64))
    return float(low), float(high)


def win_rate_ci(scores_a: Values, scores_b: Values, n: int = 1000, alpha: float = 0.05,
                seed: int = 0) -> tuple[float, float]:
    """Bootstrap (1 - alpha) interval of `win_rate(scores_a, scores_b)`, resampling comparisons."""
    return bootstrap_ci(win_outcomes(scores_a, scores_b), n=n, alpha=alpha, seed=seed)
