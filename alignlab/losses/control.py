"""Controllers of online RL, as small pure update rules (their state is a float the trainer saves):
the adaptive KL coefficient, the Safe-RLHF Lagrange multiplier, and HC-RLHF's confidence bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor


def adaptive_kl_coef(kl_coef: float, observed_kl: float, *, target: float, horizon: float, n_steps: int) -> float:
    """Ziegler et al. 2019 (sec. 2.2), the adaptive KL controller:

        e = clip(KL / target - 1, -0.2, 0.2)
        beta <- beta * (1 + e * n_steps / horizon)

    `n_steps` = samples since the last update. Raises beta when the KL overshoots the target."""
    error = min(max(observed_kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)


def lagrange_update(multiplier: float, mean_cost: float, *, threshold: float, lr: float,
                    max_value: float | None = None) -> float:
    """Safe RLHF (Dai et al. 2023, eq. 10-11): the Lagrangian min_theta max_{lambda >= 0}
    -J_R(theta) + lambda (J_C(theta) - d) is solved by projected gradient ascent on lambda:

        lambda <- max(0, lambda + lr * (J_C - d))

    It rises while the mean cost J_C exceeds the threshold d and falls (to 0) otherwise."""
    value = max(0.0, multiplier + lr * (mean_cost - threshold))
    return min(value, max_value) if max_value is not None else value


def lagrange_update_log(multiplier: float, mean_cost: float, *, threshold: float, lr: float,
                        max_value: float | None = None) -> float:
    """The same ascent with lambda = exp(log_lambda), as Safe RLHF's reference code does it: one
    gradient-ascent step on log_lambda of the Lagrangian's lambda * (J_C - d), whose derivative
    in log_lambda is lambda * (J_C - d):

        log_lambda <- log_lambda + lr * lambda * (J_C - d),    lambda <- exp(log_lambda)

    lambda stays > 0 (it never reaches 0, so the cost term never switches off) and its steps
    scale with lambda. `multiplier` must be > 0; `max_value` caps lambda."""
    if multiplier <= 0:
        raise ValueError(f"the log-space multiplier update needs lambda > 0, got {multiplier}")
    value = math.exp(math.log(multiplier) + lr * multiplier * (mean_cost - threshold))
    return min(value, max_value) if max_value is not None else value


LAGRANGE_UPDATES = {"additive": lagrange_update, "log": lagrange_update_log}


def lagrangian_advantages(reward_advantages: Tensor, cost_advantages: Tensor, multiplier: float) -> Tensor:
    """Safe RLHF's policy advantage (their PPO-Lagrangian update): (A_R - lambda * A_C) / (1 + lambda),
    the normalization keeping the step size independent of lambda.

    The KL penalty must enter both: reward token rewards r_t = -beta * kl_t (+ R at the end) and
    cost token rewards c_t = +beta * kl_t (+ C at the end), as in Safe RLHF's reference code. Then
    the KL part of the combined advantage is (-beta - lambda * beta) / (1 + lambda) * KL = -beta * KL
    for every lambda; with the KL in the reward alone it would be -beta / (1 + lambda) * KL."""
    return (reward_advantages - multiplier * cost_advantages) / (1.0 + multiplier)


def student_t_quantile(p: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, dof))


@dataclass(frozen=True)
class CostBound:
    mean: float
    std: float
    n: int
    upper: float
    """mean + t_{1-delta, n-1} * std / sqrt(n) * inflation."""
    confidence: float


def cost_upper_bound(costs: Tensor, *, delta: float, inflation: float = 1.0) -> CostBound:
    """One-sided (1 - delta) upper confidence bound of the expected cost from n i.i.d. samples
    (Student t, as in HC-RLHF's safety test, Chittepu et al. 2025, following Seldonian RL):

        U = mean(c) + inflation * t_{1-delta, n-1} * s / sqrt(n)

    `inflation` > 1 is the pessimistic bound the candidate policy is optimized under (the paper
    doubles the width during candidate selection so that the held-out test is likely to pass)."""
    c = costs.detach().double().reshape(-1)
    n = c.numel()
    if n < 2:
        raise ValueError("a confidence bound needs at least 2 cost samples")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    mean, std = float(c.mean()), float(c.std(unbiased=True))
    upper = mean + inflation * student_t_quantile(1 - delta, n - 1) * std / math.sqrt(n)
    return CostBound(mean=mean, std=std, n=n, upper=upper, confidence=1 - delta)


def safety_test(costs: Tensor, *, threshold: float, delta: float) -> dict:
    """HC-RLHF's held-out safety test: the policy passes iff the (1 - delta) upper bound of its
    expected cost on held-out samples is at most the threshold. Returns the numbers and the verdict."""
    bound = cost_upper_bound(costs, delta=delta)
    return {"passed": bound.upper <= threshold, "cost_mean": bound.mean, "cost_std": bound.std, "n": bound.n,
            "cost_upper_bound": bound.upper, "threshold": threshold, "confidence": bound.confidence}
