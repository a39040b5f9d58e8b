"""Binary-feedback losses: KTO, for single responses labelled desirable or undesirable."""

from __future__ import annotations

import torch
from torch import Tensor

Metrics = dict[str, Tensor]


def kto_reference_point(policy_kl_logps: Tensor, reference_kl_logps: Tensor) -> Tensor:
    """KTO's reference point z0 (Ethayarajh et al. 2024, arXiv:2402.01306).

        z0 = max(0, mean(pi(y'|x) - ref(y'|x)))   over mismatched pairs (x, y')

    The trainer builds the mismatched pairs by pairing each prompt of the batch with another
    example's response (e.g. the responses shifted by one), scores them with the policy and the
    reference (summed log-probs, (B,) each) and passes them here. As in the paper, z0 is a biased
    but cheap estimate of KL(pi || pi_ref): clamped at 0, and detached (no gradient flows through
    it). Under data parallelism, average the (B,) differences over all processes before calling,
    so every process uses the same z0.
    """
    return (policy_kl_logps - reference_kl_logps).detach().mean().clamp(min=0)


def kto(
    policy_logps: Tensor,
    reference_logps: Tensor,
    labels: Tensor,
    *,
    beta: float,
    kl_reference: Tensor | float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    per_example: bool = False,
) -> tuple[Tensor, Metrics]:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
    arXiv:2402.01306).

        r = pi - ref                          (B,) implicit reward log pi/pi_ref of each response
        desirable:   loss = w_d (1 - sigmoid(beta (r - z0)))
        undesirable: loss = w_u (1 - sigmoid(beta (z0 - r)))

    policy_logps/reference_logps: (B,) summed response log-probs. labels: (B,) bool, True =
    desirable. kl_reference: the scalar z0, see kto_reference_point (detached here again).
    desirable_weight/undesirable_weight: lambda_D/lambda_U (paper: 1 and 1; it advises
    lambda_D n_D / (lambda_U n_U) in [1, 4/3] for n_D desirable and n_U undesirable examples).
    beta: paper 0.1. 1 - sigmoid(x) is computed as sigmoid(-x), which needs no clipping.

    Returns the mean over the batch (or the (B,) losses with per_example=True) and detached
    metrics: rewards/chosen and rewards/rejected (mean beta * r over the desirable and the
    undesirable examples; 0 where the batch has none, see count/*), rewards/margins, kl (z0),
    count/desirable, count/undesirable.
    """
    if labels.dtype != torch.bool:
        raise TypeError(f"labels must be a bool tensor (True = desirable), got {labels.dtype}")
    if not (policy_logps.dim() == 1 and policy_logps.shape == reference_logps.shape == labels.shape):
        raise ValueError(
            f"kto takes (B,) policy_logps, reference_logps and labels; got {tuple(policy_logps.shape)}, "
            f"{tuple(reference_logps.shape)}, {tuple(labels.shape)}"
        )
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    kl = torch.as_tensor(kl_reference, dtype=policy_logps.dtype, device=policy_logps.device).detach()
    logratios = policy_logps - reference_logps.detach()  # (B,)
    desirable_losses = desirable_weight * torch.sigmoid(-beta * (logratios - kl))
    undesirable_losses = undesirable_weight * torch.sigmoid(-beta * (kl - logratios))
    losses = torch.where(labels, desirable_losses, undesirable_losses)  # (B,)

    rewards = beta * logratios.detach()
    n_desirable, n_undesirable = labels.sum(), (~labels).sum()
    chosen = torch.where(labels, rewards, 0.0).sum() / n_desirable.clamp(min=1)
    rejected = torch.where(labels, 0.0, rewards).sum() / n_undesirable.clamp(min=1)
    metrics = {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "kl": kl,
        "count/desirable": n_desirable.to(rewards.dtype),
        "count/undesirable": n_undesirable.to(rewards.dtype),
    }
    return (losses if per_example else losses.mean()), metrics
