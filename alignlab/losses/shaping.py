"""Reward shaping and sample filtering for online RL, as pure functions (B = prompts x n, prompt-major).

- `length_penalty`: r - c * (length or |length - target|), the plainest guard against length hacking.
- `par_shaping`: Preference As Reward (Fu et al. 2025, "Reward Shaping to Mitigate Reward Hacking
  in RLHF"): a bounded function of the *centered* reward, the sigmoid of the margin over reference
  responses' rewards.
- `policy_filter`: PF-PPO (Policy Filtration, Shen et al. 2024): keep only the samples whose
  rewards the reward model scores reliably (the extremes of each prompt's group).
"""

from __future__ import annotations

import torch
from torch import Tensor

PF_STRATEGIES = ("none", "best_of_n", "best_random", "best_worst")


def length_penalty(rewards: Tensor, lengths: Tensor, coef: float, target: float | None = None) -> Tensor:
    """r' = r - coef * L           (target None: every token costs `coef`)
    r' = r - coef * |L - target|  (target: distance from a wanted length).
    rewards, lengths: (B,) -> (B,)."""
    lengths = lengths.to(rewards.dtype)
    return rewards - coef * (lengths if target is None else (lengths - target).abs())


def par_shaping(rewards: Tensor, reference_rewards: Tensor) -> Tensor:
    """PAR (Fu et al. 2025, eq. for "Preference As Reward"):

        r_RL(x, y) = 1/M sum_m sigmoid(r(x, y) - r(x, y_ref_m))

    the Bradley-Terry probability that y beats the reference policy's responses y_ref_m under the
    reward model: bounded in (0, 1), steep near the reference and flat far above it, so exploiting
    the reward model far beyond the reference pays little. rewards (B,); reference_rewards (B, M)
    (the M reference rewards of each row's prompt, repeated per sample) -> (B,)."""
    if reference_rewards.dim() == 1:
        reference_rewards = reference_rewards[:, None]
    if reference_rewards.shape[0] != rewards.shape[0]:
        raise ValueError(f"reference_rewards needs one row per reward: {tuple(reference_rewards.shape)} vs {tuple(rewards.shape)}")
    return torch.sigmoid(rewards[:, None] - reference_rewards).mean(-1)


def kept_per_group(strategy: str, n: int) -> int:
    """How many of each prompt's n samples `policy_filter` keeps."""
    return {"none": n, "best_of_n": 1}.get(strategy, min(2, n))


def policy_filter(rewards: Tensor, n: int, strategy: str = "best_worst", *, generator: torch.Generator | None = None
                  ) -> Tensor:
    """PF-PPO's filtration (Shen et al. 2024, sec. 4): among each prompt's n samples keep

    - "best_of_n": the highest-reward one;
    - "best_random": the highest-reward one and one other drawn uniformly;
    - "best_worst": the highest- and the lowest-reward ones (their best strategy with a
      reward model: its rewards are most reliable at the extremes);
    - "none": all.

    Returns a (B,) bool keep-mask; the trainer computes advantages on the kept samples only (group
    statistics and whitening over them, as the paper trains on the filtered samples alone).
    Ties go to the lower index. Needs n >= 2 except for "none" and "best_of_n"."""
    if strategy not in PF_STRATEGIES:
        raise ValueError(f"unknown policy filter {strategy!r}; valid: {', '.join(PF_STRATEGIES)}")
    if rewards.dim() != 1 or rewards.numel() % n:
        raise ValueError(f"rewards must be (prompts * n,) with n={n}; got {tuple(rewards.shape)}")
    g = rewards.detach().reshape(-1, n)  # (P, n)
    keep = torch.zeros_like(g, dtype=torch.bool)
    if strategy == "none":
        return keep.fill_(True).reshape(-1)
    if strategy != "best_of_n" and n < 2:
        raise ValueError(f"policy filter {strategy!r} needs n >= 2")
    rows = torch.arange(g.shape[0])
    best = g.argmax(-1)
    keep[rows, best] = True
    if strategy == "best_worst":
        worst = torch.where(g == g.min(-1, keepdim=True).values, torch.arange(n).expand_as(g), n).min(-1).values
        same = worst == best  # all rewards equal: take the next index as the "worst"
        keep[rows, torch.where(same, (best + 1) % n, worst)] = True
    elif strategy == "best_random":
        offset = torch.randint(1, n, (g.shape[0],), generator=generator)  # uniform over the others
        keep[rows, (best + offset) % n] = True
    return keep.reshape(-1)
