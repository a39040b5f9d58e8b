"""Policy-gradient losses of online RL from feedback, as pure functions of per-token tensors.

Shapes: B sequences (completions), T response positions, `mask` (B, T) 1 on real response tokens.
`logps` are log pi_theta(y_t | x, y_<t) of the sampled tokens, `old_logps` the same under the
policy that sampled them (pi_old), `reference_logps` under the frozen reference pi_ref.
Token losses are reduced by the one shared `reduce_token_loss` (token_mean,
seq_mean_token_mean, sum, constant): the trainers and the tabular-bandit lab call these same
functions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignlab.losses.reduce import reduce_token_loss

KL_ESTIMATORS = ("k1", "k2", "k3")


def _reduce(token_loss: Tensor, mask: Tensor, reduction: str, normalizer: float | None) -> Tensor:
    """reduce_token_loss, plus "none": the (B, T) token losses, zero outside the mask (for a trainer
    that normalizes over a whole accumulation window itself)."""
    if reduction == "none":
        return torch.where(mask.bool(), token_loss, 0.0)
    return reduce_token_loss(token_loss, mask, reduction, normalizer=normalizer)


def kl_estimate(logps: Tensor, reference_logps: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimators of KL(pi_theta || pi_ref) from samples y ~ pi_theta (Schulman, "Approximating
    KL divergence", 2020). With log-ratio l = log pi_theta(y) - log pi_ref(y):

        k1 = l                          unbiased, can be negative; the classic per-token reward penalty
        k2 = l^2 / 2                    biased, low variance; its gradient E[l * grad log pi] is the
                                        exact gradient of KL(pi_theta || pi_ref) on on-policy samples
        k3 = exp(-l) - 1 + l            unbiased, always >= 0; GRPO's KL loss term

    Any shape; elementwise. Gradients flow through `logps` only when the caller lets them."""
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; valid: {', '.join(KL_ESTIMATORS)}")
    log_ratio = logps - reference_logps
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    return torch.expm1(-log_ratio) + log_ratio  # exp(-l) - 1 + l, accurate for small l


def clipped_surrogate(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    dual_clip: float | None = None,
    reduction: str = "token_mean",
    normalizer: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), per token, as a loss to minimize:

        rho_t = exp(logps_t - old_logps_t)
        L_t = -min(rho_t * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t)

    eps_low = `clip_low`, eps_high = `clip_high` (None: = clip_low; a larger eps_high is DAPO's
    "clip-higher", asymmetric clipping). `dual_clip` = c > 1 adds the dual clip of Ye et al. 2020
    for negative advantages: L_t = min(L_t, -c * A_t) where A_t < 0, bounding the loss of a token
    whose ratio exploded. `advantages` (B, T) or (B,) (one per sequence, broadcast over its tokens:
    GRPO/RLOO); they carry no gradient. Reduced over `mask` by `reduction` (reduce_token_loss's
    modes, or "none" for the masked (B, T) token losses).

    Metrics: clip_fraction (tokens where the clipped term was the active one), approx_kl
    (k3 of old vs new, token mean), ratio_mean.
    """
    clip_high = clip_low if clip_high is None else clip_high
    advantages = advantages.detach()
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logps)  # (B,) -> (B, T)
    log_ratio = logps - old_logps.detach()
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    token_loss = -torch.minimum(unclipped, clipped)  # (B, T)
    if dual_clip is not None:
        if not dual_clip > 1:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        token_loss = torch.where(advantages < 0, torch.minimum(token_loss, -dual_clip * advantages), token_loss)
    loss = _reduce(token_loss, mask, reduction, normalizer)
    with torch.no_grad():
        m = mask.bool()
        n = m.sum().clamp(min=1)
        metrics = {
            "clip_fraction": ((clipped < unclipped) & m).sum() / n,
            "approx_kl": torch.where(m, torch.expm1(log_ratio) - log_ratio, 0.0).sum() / n,
            "ratio_mean": torch.where(m, ratio, 0.0).sum() / n,
        }
    return loss, metrics


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip: float | None = 0.2,
    reduction: str = "token_mean",
    normalizer: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped value loss (as in OpenAI baselines' ppo2 and Secrets of RLHF I, sec. 5.3):

        V_clip = old_V + clip(V - old_V, -c, c)
        L_t = 1/2 * max((V_t - R_t)^2, (V_clip_t - R_t)^2)

    `clip` = c (None: no clipping, plain 1/2 (V - R)^2). `returns` R and `old_values` carry no
    gradient. All (B, T); reduced over `mask`. Metrics: value_clip_fraction, explained_variance
    (1 - Var[R - V] / Var[R] over the masked tokens).
    """
    returns, old_values = returns.detach(), old_values.detach()
    plain = (values - returns).square()
    if clip is None:
        token_loss, clipped_frac_src = 0.5 * plain, torch.zeros_like(plain, dtype=torch.bool)
    else:
        v_clip = old_values + torch.clamp(values - old_values, -clip, clip)
        clipped_sq = (v_clip - returns).square()
        token_loss = 0.5 * torch.maximum(plain, clipped_sq)
        clipped_frac_src = clipped_sq > plain
    loss = _reduce(token_loss, mask, reduction, normalizer)
    with torch.no_grad():
        m = mask.bool()
        n = m.sum().clamp(min=1)
        metrics = {
            "value_clip_fraction": (clipped_frac_src & m).sum() / n,
            "explained_variance": explained_variance(values.detach(), returns, m),
        }
    return loss, metrics


def explained_variance(predictions: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """1 - Var[targets - predictions] / Var[targets] over the masked entries (1 = perfect value
    function, 0 = no better than a constant, negative = worse). 0 when the targets are constant."""
    m = mask.bool()
    t, p = targets[m], predictions[m]
    if t.numel() < 2:
        return t.new_zeros(())
    var_t = t.var(unbiased=False)
    if var_t <= 0:
        return t.new_zeros(())
    return 1.0 - (t - p).var(unbiased=False) / var_t


def kl_loss(
    logps: Tensor,
    reference_logps: Tensor,
    mask: Tensor,
    *,
    kind: str = "k3",
    reduction: str = "token_mean",
    normalizer: float | None = None,
) -> Tensor:
    """The KL penalty as a loss term (GRPO, Shao et al. 2024, eq. 3 uses k3): reduce(kl_estimate).
    The trainer adds beta times it to the policy loss; the reference carries no gradient."""
    return _reduce(kl_estimate(logps, reference_logps.detach(), kind), mask, reduction, normalizer)


def p3o_loss(
    logps_a: Tensor,
    logps_b: Tensor,
    old_logps_a: Tensor,
    old_logps_b: Tensor,
    rewards_a: Tensor,
    rewards_b: Tensor,
    *,
    clip: float = 0.2,
    mode: str = "joint",
    per_example: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Pairwise Proximal Policy Optimization (Wu et al. 2023, arXiv 2310.00212), trajectory-wise.

    Two responses y_a, y_b to one prompt, with summed log-probs (P,) and rewards (P,). The pairwise
    policy gradient (their eq. for "PPG") is

        grad = E[ (r_a - r_b) / 2 * grad (log pi(y_a) - log pi(y_b)) ]

    which depends on rewards only through r_a - r_b: adding any per-prompt constant to both
    rewards changes nothing, so no value function or baseline is needed. The clipped versions:

    - mode "joint" (P3O-V2): one ratio for the pair, rho = pi(y_a) pi_old(y_b) / (pi_old(y_a) pi(y_b)),
      L = -min(rho * A, clip(rho, 1 - eps, 1 + eps) * A) with A = (r_a - r_b) / 2;
    - mode "separate" (P3O-V1): each response clipped on its own ratio with advantage +A and -A,
      L = -[min(rho_a A, clip(rho_a) A) + min(-rho_b A, -clip(rho_b) A)].

    Both have the gradient above at rho = 1. Rewards carry no gradient (KL-shaped rewards are the
    trainer's business). Returns the mean over pairs (the (P,) per-pair losses with per_example)
    and metrics (clip_fraction, reward_gap).
    """
    if mode not in ("joint", "separate"):
        raise ValueError(f"p3o mode must be 'joint' or 'separate', got {mode!r}")
    adv = (rewards_a - rewards_b).detach() / 2  # (P,)
    ra = logps_a - old_logps_a.detach()
    rb = logps_b - old_logps_b.detach()
    if mode == "joint":
        rho = torch.exp(ra - rb)  # (P,)
        unclipped, clipped = rho * adv, torch.clamp(rho, 1 - clip, 1 + clip) * adv
        per_pair = -torch.minimum(unclipped, clipped)
        active = clipped < unclipped
    else:
        rho_a, rho_b = torch.exp(ra), torch.exp(rb)
        ua, ca = rho_a * adv, torch.clamp(rho_a, 1 - clip, 1 + clip) * adv
        ub, cb = -rho_b * adv, -torch.clamp(rho_b, 1 - clip, 1 + clip) * adv
        per_pair = -(torch.minimum(ua, ca) + torch.minimum(ub, cb))
        active = (ca < ua) | (cb < ub)
    metrics = {"clip_fraction": active.float().mean().detach(), "reward_gap": adv.abs().mean() * 2}
    return (per_pair if per_example else per_pair.mean()), metrics
