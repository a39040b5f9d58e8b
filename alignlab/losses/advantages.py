"""Advantage estimators of online RL from feedback, as pure functions.

Layout: completions are prompt-major groups, row i is sample i % n of prompt i // n (the rollout
protocol's `Completions` order). Sequence-level rewards are (B,) with B = prompts x n; token
tensors are (B, T) with `mask` (B, T) 1 on real response tokens, left-aligned (token 0 of each
row is the first response token). The LM trainers and the tabular-bandit lab call these same
functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _groups(rewards: Tensor, n: int) -> Tensor:
    if rewards.dim() != 1 or n < 1 or rewards.numel() % n:
        raise ValueError(f"rewards must be (prompts * n,) with n={n}; got shape {tuple(rewards.shape)}")
    return rewards.reshape(-1, n)  # (P, n)


def last_token_index(mask: Tensor) -> Tensor:
    """(B,) index of each row's last real token (mask left-aligned); -1 for an empty row."""
    return mask.long().sum(-1) - 1


def token_rewards(rewards: Tensor, mask: Tensor, kl: Tensor | None = None, kl_coef: float = 0.0) -> Tensor:
    """Per-token rewards of RLHF's token MDP (Ziegler et al. 2019; Ouyang et al. 2022):

        r_t = -kl_coef * kl_t + [t = last response token] * R

    `rewards` R (B,) is the sequence reward, put on the last real token only (never on a pad or
    prompt token); `kl` (B, T) the per-token KL estimate (k1 classically). Rows without tokens get
    nothing. Returns (B, T), zero outside the mask."""
    out = torch.zeros(mask.shape, dtype=rewards.dtype, device=rewards.device)
    if kl is not None and kl_coef:
        out = out - kl_coef * torch.where(mask.bool(), kl.detach(), 0.0)
    last = last_token_index(mask)
    rows = (last >= 0).nonzero(as_tuple=True)[0]
    out[rows, last[rows]] += rewards[rows].detach()
    return out


def gae(token_rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0, lam: float = 0.95
        ) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16), per response token:

        delta_t = r_t + gamma * V_{t+1} - V_t        (V after the last token = 0: the episode ends)
        A_t = sum_l (gamma * lam)^l * delta_{t+l}
        returns_t = A_t + V_t                        (the value targets)

    `token_rewards`, `values`, `mask`: (B, T). Returns (advantages, returns), zero outside the mask.
    No gradient flows (values are the old critic's)."""
    mask = mask.to(values.dtype)
    values = values.detach() * mask
    rewards = token_rewards.detach() * mask
    B, T = values.shape
    advantages = torch.zeros_like(values)
    running = torch.zeros(B, dtype=values.dtype, device=values.device)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Reward-to-go G_t = sum_{l>=0} gamma^l r_{t+l} per token, (B, T), zero outside the mask."""
    mask = mask.to(token_rewards.dtype)
    rewards = token_rewards.detach() * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        out[:, t] = running
    return out


def whiten(values: Tensor, mask: Tensor | None = None, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / std over the masked entries (all entries when mask is None); shift_mean=False
    keeps the mean (only rescales), as PPO implementations do for advantages at times."""
    m = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.bool()
    sel = values[m]
    if sel.numel() < 2:  # no spread to normalize by: centered -> 0, uncentered -> unchanged
        return torch.where(m, torch.zeros_like(values) if shift_mean else values, 0.0)
    mean, std = sel.mean(), sel.std(unbiased=False)
    out = (values - mean) / (std + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, 0.0)


def group_advantages(rewards: Tensor, n: int, *, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO (Shao et al. 2024, sec. 4.1.2, outcome supervision): within each prompt's group of n

        A_i = (r_i - mean(r_group)) / (std(r_group) + eps)     scale=True  (GRPO)
        A_i = r_i - mean(r_group)                             scale=False (Dr. GRPO, Liu et al. 2025)

    std is the sample standard deviation (n - 1), as in the GRPO reference code and TRL. A group
    whose rewards are all equal gets zero advantages (it teaches nothing). (B,) -> (B,)."""
    g = _groups(rewards.detach(), n)
    centered = g - g.mean(-1, keepdim=True)
    if scale:
        std = g.std(-1, keepdim=True, unbiased=True) if n > 1 else torch.zeros_like(g[:, :1])
        centered = centered / (std + eps)
    return centered.reshape(-1)


def rloo_advantages(rewards: Tensor, n: int) -> Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, eq. 6): each sample's
    baseline is the mean reward of the other n - 1 samples of its prompt,

        A_i = r_i - 1/(n-1) sum_{j != i} r_j = n/(n-1) * (r_i - mean(r_group)).

    Needs n >= 2. (B,) -> (B,)."""
    if n < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt (n >= 2)")
    g = _groups(rewards.detach(), n)
    return ((g - g.mean(-1, keepdim=True)) * n / (n - 1)).reshape(-1)


def remax_advantages(rewards: Tensor, greedy_rewards: Tensor, n: int) -> Tensor:
    """ReMax (Li et al. 2023, Algorithm 1): the baseline of a prompt is the reward of its greedy
    decoding, A_i = r_i - r(greedy response of prompt i // n). rewards (B,), greedy_rewards (P,)."""
    g = _groups(rewards.detach(), n)
    if greedy_rewards.shape != (g.shape[0],):
        raise ValueError(f"greedy_rewards must be (prompts,) = ({g.shape[0]},), got {tuple(greedy_rewards.shape)}")
    return (g - greedy_rewards.detach()[:, None]).reshape(-1)


def reinforce_pp_advantages(token_rewards: Tensor, mask: Tensor, *, gamma: float = 1.0) -> Tensor:
    """REINFORCE++ (Hu 2025, sec. 3): reward-to-go of the KL-shaped token rewards (`token_rewards`,
    with the per-token KL penalty already in), then normalized over the whole batch (every masked
    token of every prompt; no per-prompt group baseline):

        A_t = (G_t - mean_batch(G)) / std_batch(G).    (B, T) -> (B, T)"""
    return whiten(discounted_returns(token_rewards, mask, gamma), mask)


def sequence_to_tokens(advantages: Tensor, mask: Tensor) -> Tensor:
    """Broadcast one advantage per sequence (B,) to its tokens (B, T), zero outside the mask."""
    return torch.where(mask.bool(), advantages.detach()[:, None].expand(mask.shape), 0.0)


def sequence_kl(kl: Tensor | None, mask: Tensor) -> Tensor | None:
    """Summed per-token KL of each sequence, (B, T) -> (B,)."""
    return None if kl is None else torch.where(mask.bool(), kl.detach(), 0.0).sum(-1)


@dataclass(frozen=True)
class EstimatorSpec:
    """One advantage estimator of the table below; trainers ask these fields, never the name."""

    name: str
    needs_values: bool
    """Needs a critic's per-token values (PPO's GAE)."""
    needs_greedy: bool
    """Needs the reward of each prompt's greedy completion (ReMax)."""
    min_samples: int
    """Completions per prompt it needs (group baselines need at least 2)."""
    paper: str


ESTIMATORS: dict[str, EstimatorSpec] = {
    s.name: s
    for s in (
        EstimatorSpec("gae", True, False, 1, "Schulman et al. 2016, High-Dimensional Continuous Control Using GAE (arXiv 1506.02438)"),
        EstimatorSpec("grpo", False, False, 2, "Shao et al. 2024, DeepSeekMath (arXiv 2402.03300)"),
        EstimatorSpec("rloo", False, False, 2, "Ahmadian et al. 2024, Back to Basics (arXiv 2402.14740)"),
        EstimatorSpec("reinforce_pp", False, False, 1, "Hu 2025, REINFORCE++ (arXiv 2501.03262)"),
        EstimatorSpec("remax", False, True, 1, "Li et al. 2023, ReMax (arXiv 2310.10505)"),
    )
}


def compute_advantages(
    estimator: str,
    rewards: Tensor,
    mask: Tensor,
    *,
    n: int,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    values: Tensor | None = None,
    greedy_rewards: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
    scale: bool = True,
    whiten_advantages: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Token advantages (B, T) and value targets (B, T) (None without a critic) for any estimator.

    `rewards` (B,) are the sequence rewards after shaping; `kl` (B, T) the per-token KL estimate and
    `kl_coef` its weight *as a reward penalty* (0 when the trainer puts the KL in the loss instead).
    Where the KL enters:
    - gae, reinforce_pp: per token, r_t = -kl_coef * kl_t (+ R on the last token), token_rewards();
    - grpo, rloo, remax: per sequence, R - kl_coef * sum_t kl_t, then the group baseline.
    `scale` is GRPO's division by the group std; `whiten_advantages` whitens GAE's advantages over
    the batch (PPO's usual advantage normalization; REINFORCE++ always normalizes over the batch).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    spec = ESTIMATORS[estimator]
    if spec.needs_values and values is None:
        raise ValueError(f"estimator {estimator!r} needs values (a critic)")
    if spec.needs_greedy and greedy_rewards is None:
        raise ValueError(f"estimator {estimator!r} needs greedy_rewards")
    if estimator in ("gae", "reinforce_pp"):
        per_token = token_rewards(rewards, mask, kl, kl_coef)
        if estimator == "reinforce_pp":
            return reinforce_pp_advantages(per_token, mask, gamma=gamma), None
        advantages, returns = gae(per_token, values, mask, gamma=gamma, lam=lam)
        return (whiten(advantages, mask) if whiten_advantages else advantages), returns
    shaped = rewards.detach()
    if kl is not None and kl_coef:
        shaped = shaped - kl_coef * sequence_kl(kl, mask)
    if estimator == "grpo":
        seq = group_advantages(shaped, n, scale=scale)
    elif estimator == "rloo":
        seq = rloo_advantages(shaped, n)
    else:
        seq = remax_advantages(shaped, greedy_rewards, n)
    return sequence_to_tokens(seq, mask), None
