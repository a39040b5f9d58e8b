"""Aggregating an ensemble's rewards into one conservative score (Coste et al. 2023,
"Reward Model Ensembles Help Mitigate Overoptimization", arXiv:2310.02743).

rewards: (K, N) — K members' rewards for N responses. Pure functions of tensors.
"""

from __future__ import annotations

from torch import Tensor


def mean_reward(rewards: Tensor) -> Tensor:
    """R(x, y) = (1/K) sum_k R_k(x, y)."""
    return rewards.mean(dim=0)


def worst_case(rewards: Tensor) -> Tensor:
    """WCO: R(x, y) = min_k R_k(x, y)."""
    return rewards.min(dim=0).values


def uncertainty_weighted(rewards: Tensor, coef: float = 0.5) -> Tensor:
    """UWO: R(x, y) = mean_k R_k - lambda * Var_k R_k, the population variance over members
    (1/K sum (R_k - mean)^2, as in the paper's eq.), lambda = `coef`."""
    return rewards.mean(dim=0) - coef * rewards.var(dim=0, unbiased=False)


AGGREGATIONS = {"mean": mean_reward, "wco": worst_case, "uwo": uncertainty_weighted}


def aggregate(rewards: Tensor, how: str = "mean", *, uwo_coef: float = 0.5) -> Tensor:
    """(K, N) member rewards -> (N,) by `how` in mean | wco | uwo."""
    if rewards.dim() != 2:
        raise ValueError(f"ensemble rewards must be (K, N), got shape {tuple(rewards.shape)}")
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {sorted(AGGREGATIONS)}")
    if how == "uwo":
        return uncertainty_weighted(rewards, uwo_coef)
    return AGGREGATIONS[how](rewards)
