"""Best-of-N: keep the highest-scoring of N samples, and the exact expected outcome of BoN-n from
m >= n samples (used to draw overoptimization curves without re-sampling for every n)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def best_of_n_kl(n: int) -> float:
    """KL(BoN-n || base) = log n - (n - 1) / n (Stiennon et al. 2020; Gao et al. 2022)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    return math.log(n) - (n - 1) / n


def select_best(scores: Tensor) -> Tensor:
    """(P, N) scores -> (P,) index of the best sample per prompt (first on ties)."""
    return scores.argmax(dim=-1)


def expected_best_of_n(selector: Tensor, values: Tensor, n: int) -> Tensor:
    """Exact E[value of the sample BoN-n picks by `selector`], over all n-subsets of the m samples
    per prompt: the i-th lowest selector score (0-based) is the subset's best with probability
    C(i, n-1) / C(m, n). selector/values: (P, m) -> (P,). Ties in `selector` are broken by index."""
    P, m = selector.shape
    if not 1 <= n <= m:
        raise ValueError(f"n must be in [1, {m}], got {n}")
    order = selector.argsort(dim=-1, stable=True)  # ascending
    sorted_values = values.gather(-1, order).double()
    i = torch.arange(m, dtype=torch.float64)
    # log C(i, n-1) - log C(m, n), zero probability where i < n-1
    log_w = torch.lgamma(i + 1) - torch.lgamma(i - n + 2) - torch.lgamma(torch.tensor(n, dtype=torch.float64))
    log_w = log_w - (torch.lgamma(torch.tensor(m + 1.0)) - torch.lgamma(torch.tensor(n + 1.0)) - torch.lgamma(torch.tensor(m - n + 1.0)))
    w = torch.where(i >= n - 1, log_w.exp(), torch.zeros_like(i))
    return (sorted_values * w).sum(-1)
