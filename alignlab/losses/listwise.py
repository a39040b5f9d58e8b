"""Listwise losses over K ranked responses per prompt: PRO and LiPO-lambda.

Shapes: B prompts, K responses each. policy_logps/reference_logps are (B, K) summed response
log-probs, scores are (B, K) labels (higher = better; only their order and, where a loss says
so, their gaps matter) and mask is an optional (B, K) bool, False on padding entries of shorter
lists. Padding entries may hold anything (even NaN): they are replaced before any arithmetic,
so they get neither loss nor gradient.

Both return (loss, metrics): the batch mean (or the (B,) losses with per_example=True) and
detached metrics with the keys of the pairwise losses, read over the list: rewards/chosen and
rewards/rejected are the mean implicit rewards of the best- and worst-scored response,
rewards/margins their difference, rewards/accuracy the fraction of ordered pairs
(score_i > score_j) whose rewards are in the same order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

Metrics = dict[str, Tensor]


def _list_mask(policy_logps: Tensor, scores: Tensor, mask: Tensor | None, *others: Tensor | None) -> Tensor:
    """The (B, K) bool mask, after checking that every (B, K) input has one shape."""
    shapes = [tuple(t.shape) for t in (policy_logps, scores, mask, *others) if t is not None]
    if len(shapes[0]) != 2 or len(set(shapes)) != 1:
        raise ValueError(f"listwise losses take (B, K) inputs of one shape; got shapes {shapes}")
    if mask is None:
        return torch.ones_like(scores, dtype=torch.bool)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    return mask


def _ordered_pairs(scores: Tensor, mask: Tensor) -> Tensor:
    """(B, K, K) bool: [b, i, j] is True where both entries are real and score_i > score_j.
    Equal scores make no pair: a tie carries no preference."""
    valid = mask[:, :, None] & mask[:, None, :]
    return valid & (scores[:, :, None] > scores[:, None, :])


def _list_metrics(rewards: Tensor, scores: Tensor, mask: Tensor, pairs: Tensor) -> Metrics:
    rewards = rewards.detach()
    best = scores.masked_fill(~mask, -math.inf).argmax(-1, keepdim=True)  # (B, 1)
    worst = scores.masked_fill(~mask, math.inf).argmin(-1, keepdim=True)  # (B, 1)
    chosen, rejected = rewards.gather(-1, best), rewards.gather(-1, worst)
    in_order = pairs & (rewards[:, :, None] > rewards[:, None, :])
    return {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "rewards/accuracy": in_order.sum() / pairs.sum().clamp(min=1),
    }


def pro(
    policy_logps: Tensor,
    scores: Tensor,
    *,
    beta: float,
    lengths: Tensor,
    mask: Tensor | None = None,
    score_temperature: bool = True,
    per_example: bool = False,
) -> tuple[Tensor, Metrics]:
    """PRO, Preference Ranking Optimization (Song et al. 2023, arXiv:2306.17492), reference-free.

    With the responses in score order y^1 > ... > y^n and r(y) = log pi(y|x) / |y| (the
    length-normalised log-prob):

        L_rank = -sum_{k=1}^{n-1} log [ exp(r(y^k) / T_k^k) / sum_{i>=k} exp(r(y^i) / T_k^i) ]
        1/T_k^i = score(y^k) - score(y^i) (i > k),   1/T_k^k = max_{i>k} 1/T_k^i
        loss = L_rank + beta (n - 1)^2 L_sft,   L_sft = -log pi(y^1|x)

    policy_logps: (B, K) summed log-probs; lengths: (B, K) response token counts (> 0 on real
    entries); scores: (B, K), the reward-model scores whose gaps set the temperatures.
    score_temperature=False is the paper's "PRO w/o T": every 1/T is 1, only the order counts.
    beta: the paper's beta, the weight of the SFT term (paper and code: 0.05). It is NOT a KL
    strength here: PRO has no reference model.

    Deviations, both following the authors' code: the SFT weight grows as (n - 1)^2 with n the
    number of real entries of the list, and L_sft is the summed (not token-averaged) NLL of the
    best response. Ties: a response is contrasted only against strictly lower-scored ones (the
    paper assumes a strict ranking); the best of several tied ones takes the SFT term.
    Metrics: the rewards are r(y); also loss/ranking and loss/sft (batch means).
    """
    mask = _list_mask(policy_logps, scores, mask, lengths)
    if not beta >= 0:
        raise ValueError(f"beta (the SFT weight) must be >= 0, got {beta}")
    if not bool((lengths[mask] > 0).all()):
        raise ValueError("pro needs response lengths > 0 on every real entry")
    scores = scores.detach().to(policy_logps.dtype)
    safe_lengths = torch.where(mask, lengths.to(policy_logps.dtype), 1.0)
    rewards = torch.where(mask, policy_logps, 0.0) / safe_lengths  # (B, K) r(y)

    beats = _ordered_pairs(scores, mask)  # (B, K, K): [b, k, i] i is a negative for anchor k
    if score_temperature:
        inverse_temps = torch.where(beats, scores[:, :, None] - scores[:, None, :], 0.0)  # (B, K, K)
        anchor_inverse_temps = inverse_temps.amax(-1)  # (B, K)
    else:
        inverse_temps = beats.to(rewards.dtype)
        anchor_inverse_temps = torch.ones_like(rewards)
    anchor_logits = rewards * anchor_inverse_temps  # (B, K)
    negative_logits = torch.where(beats, rewards[:, None, :] * inverse_temps, -math.inf)  # (B, K, K)
    all_logits = torch.cat([anchor_logits[:, :, None], negative_logits], dim=-1)  # (B, K, K+1)
    terms = torch.logsumexp(all_logits, dim=-1) - anchor_logits  # (B, K)
    ranking_losses = torch.where(beats.any(-1), terms, 0.0).sum(-1)  # (B,), last/padded anchors add 0

    best = scores.masked_fill(~mask, -math.inf).argmax(-1, keepdim=True)  # (B, 1)
    best_logps = torch.where(mask, policy_logps, 0.0).gather(-1, best).squeeze(-1)  # (B,)
    list_sizes = mask.sum(-1).to(rewards.dtype)  # (B,)
    sft_losses = beta * (list_sizes - 1).clamp(min=0) ** 2 * -best_logps  # (B,)
    losses = ranking_losses + sft_losses

    metrics = _list_metrics(rewards, scores, mask, beats)
    metrics["loss/ranking"] = ranking_losses.detach().mean()
    metrics["loss/sft"] = sft_losses.detach().mean()
    return (losses if per_example else losses.mean()), metrics


def _ranks(values: Tensor, tiebreak: Tensor, mask: Tensor) -> Tensor:
    """(B, K) 1-based rank of each entry with the real entries sorted by values, descending.

    Ties in values are broken by tiebreak (descending), then by position, so the ranks are
    always a permutation; padding entries rank after all real ones.
    """
    values = values.masked_fill(~mask, -math.inf)
    tiebreak = tiebreak.masked_fill(~mask, -math.inf)
    order = torch.sort(tiebreak, dim=-1, descending=True, stable=True).indices  # (B, K)
    by_value = torch.sort(values.gather(-1, order), dim=-1, descending=True, stable=True).indices
    order = order.gather(-1, by_value)  # (B, K) item at each rank position
    positions = torch.arange(1, values.shape[-1] + 1, device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


def lipo_lambda(
    policy_logps: Tensor,
    reference_logps: Tensor,
    scores: Tensor,
    *,
    beta: float,
    mask: Tensor | None = None,
    per_example: bool = False,
) -> tuple[Tensor, Metrics]:
    """LiPO-lambda (Liu et al. 2024, "LiPO: Listwise Preference Optimization through
    Learning-to-Rank", arXiv:2402.01878): a LambdaLoss over all ordered pairs of the list.

        s_i = beta (pi_i - ref_i)                                         (B, K)
        loss = - sum_{i,j: psi_i > psi_j} Delta_ij log sigmoid(s_i - s_j)
        Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|,  G = 2^psi - 1,  D(tau) = log2(1 + tau)

    psi = scores (B, K); tau_i = the rank (1 = top) of response i when the list is sorted by the
    policy's implicit rewards s, so the weights follow the policy's current ordering; they are
    constants (no gradient), as in LambdaLoss. Pairs with equal scores are skipped (no
    preference); mask drops padding entries. The per-list loss is the sum over pairs (paper), so
    longer lists weigh more. Gains 2^psi need scores of moderate size (the paper uses labels in
    [0, 1]); beta is the DPO-like KL strength.

    With K = 2 there is one pair and Delta = (2^psi_1 - 2^psi_2)(1 - 1/log2(3)) whatever the
    ranks, so the loss is DPO's times a positive per-example constant: same gradient direction,
    which is the paper's "DPO is the special case of list size two" for the pairwise form.

    Deviation: at ties in s (e.g. at the first step, when the policy equals the reference and
    every s is 0) the paper's TF-Ranking code breaks ties at random; here ties are broken by
    score, best first, so that the result is deterministic and the initial weights are those of
    the ideal ordering (a tie that gave every response the same rank would zero every weight).
    """
    mask = _list_mask(policy_logps, scores, mask, reference_logps)
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    scores = scores.detach().to(policy_logps.dtype)
    rewards = beta * torch.where(mask, policy_logps - reference_logps.detach(), 0.0)  # (B, K) s

    ranks = _ranks(rewards.detach(), scores, mask).to(rewards.dtype)  # (B, K) tau
    inverse_discounts = 1.0 / torch.log2(1.0 + ranks)  # (B, K)
    gains = torch.where(mask, torch.exp2(scores), 0.0) - 1.0  # (B, K)
    weights = (gains[:, :, None] - gains[:, None, :]).abs() * (
        inverse_discounts[:, :, None] - inverse_discounts[:, None, :]
    ).abs()  # (B, K, K) Delta_ij

    pairs = _ordered_pairs(scores, mask)  # (B, K, K)
    pair_losses = -F.logsigmoid(rewards[:, :, None] - rewards[:, None, :])  # (B, K, K)
    losses = torch.where(pairs, weights * pair_losses, 0.0).sum((-1, -2))  # (B,)
    return (losses if per_example else losses.mean()), _list_metrics(rewards, scores, mask, pairs)
