"""Exact KL-regularized policies on a fixed candidate pool of K responses per prompt.

The maximizer of E_{y~pi}[r(x, y)] - beta KL(pi(.|x) || pi_ref(.|x)) is, in closed form
(e.g. Rafailov et al. 2023, arXiv:2305.18290, eq. 4),

    pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x)

so on a pool the policy of a reward model is exact, and its gold reward is an exact expectation.
"""

from __future__ import annotations

import torch
from torch import Tensor


def kl_policy(reference_logps: Tensor, rewards: Tensor, beta: float) -> Tensor:
    """log pi* = log_softmax(log pi_ref + r / beta) over the pool; (..., P, K) in, same out."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return torch.log_softmax(reference_logps + rewards / beta, dim=-1)


def center_rewards(rewards: Tensor, reference_logps: Tensor) -> Tensor:
    """r - E_{pi_ref}[r] per prompt: (..., P, K). A Bradley-Terry reward is identified only up to
    a shift per prompt; this fixes the shift so that r measures the gain over the reference."""
    return rewards - (reference_logps.exp() * rewards).sum(-1, keepdim=True)


def expected_rewards(logps: Tensor, rewards: Tensor) -> Tensor:
    """E_{y~pi}[r] averaged over prompts; logps (P, K), rewards (..., P, K) -> (...)."""
    return (logps.exp() * rewards).sum(-1).mean(-1)


def kl_to_reference(logps: Tensor, reference_logps: Tensor) -> float:
    """Mean over prompts of KL(pi(.|x) || pi_ref(.|x)), nats."""
    return float((logps.exp() * (logps - reference_logps)).sum(-1).mean())
