"""Reward-model losses: pairwise Bradley-Terry (with margin, label smoothing and centering),
pointwise rating regression, binary (thumbs-up) classification, the Safe RLHF cost model and
ArmoRM's gated Bradley-Terry loss. Pure functions of rewards.

`per_example=True` returns per-example terms whose sum, divided by the function's own
normaliser (`examples` below: pairs, responses, or rated entries for `rating_regression`), is the
loss; a trainer that divides the sum over all micro-batches of a step by the total normaliser
gets the loss of the whole step."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

Metrics = dict[str, Tensor]


def bradley_terry(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    *,
    margin: Tensor | None = None,
    label_smoothing: float = 0.0,
    flip_rate: float = 0.0,
    center_coef: float = 0.0,
    weights: Tensor | None = None,
    per_example: bool = False,
) -> tuple[Tensor, Metrics]:
    """Bradley-Terry reward-model loss (Ouyang et al. 2022; margin as in Llama 2, arXiv:2307.09288;
    label smoothing for noisy labels as in Secrets of RLHF II, arXiv:2401.06080; centering as in
    Eisenstein et al. 2023, arXiv:2312.09244).

        d     = r(x, y_c) - r(x, y_r) - m              m: per-pair margin (0 when None)
        loss  = -(1 - eps) log sigmoid(d) - eps log sigmoid(-d) + eta (r(x, y_c) + r(x, y_r))^2

    or, with flip_rate rho > 0, the likelihood of a label that an annotator flips with probability
    rho (forward noise correction, Patrini et al. 2017, arXiv:1609.03683):

        loss  = -log( (1 - rho) sigmoid(d) + rho sigmoid(-d) ) + eta (r(x, y_c) + r(x, y_r))^2

    Label smoothing keeps pulling a pair towards its (possibly flipped) label with weight 1 - eps
    however confident the model already is the other way; the flip likelihood is bounded (at most
    -log rho), so a pair the model confidently contradicts stops pulling: read as a flipped label.

    chosen_rewards/rejected_rewards: (B,) scalar rewards r. margin: (B,) m >= 0, larger for
    clearer preferences (Llama 2 uses a Likert-derived step). label_smoothing: eps in [0, 0.5),
    the assumed share of flipped labels. flip_rate: rho in [0, 0.5), the flip probability of the
    noise model above (exclusive with label_smoothing). center_coef: eta, pulls the mean reward of each pair to 0
    so that rewards from different prompts are comparable. weights: (B,) per-pair weights
    (preference-strength weighting); the mean is weighted, sum(w * l) / sum(w).

    Returns the batch mean (or (B,) losses with per_example=True) and detached metrics:
    accuracy (share with r_c > r_r), margin_mean (mean r_c - r_r), reward_mean.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if not 0.0 <= flip_rate < 0.5:
        raise ValueError(f"flip_rate must be in [0, 0.5), got {flip_rate}")
    if flip_rate and label_smoothing:
        raise ValueError("label_smoothing and flip_rate are two models of the same label noise: set one")
    diff = chosen_rewards - rejected_rewards  # (B,)
    d = diff - margin if margin is not None else diff
    if flip_rate:
        losses = -torch.logaddexp(math.log1p(-flip_rate) + F.logsigmoid(d), math.log(flip_rate) + F.logsigmoid(-d))
    else:
        losses = -(1.0 - label_smoothing) * F.logsigmoid(d) - label_smoothing * F.logsigmoid(-d)
    if center_coef:
        losses = losses + center_coef * (chosen_rewards + rejected_rewards) ** 2
    metrics = {
        "accuracy": (diff > 0).float().mean().detach(),
        "margin_mean": diff.mean().detach(),
        "reward_mean": torch.cat([chosen_rewards, rejected_rewards]).mean().detach(),
    }
    if per_example:
        return losses, metrics
    if weights is not None:
        return (weights * losses).sum() / weights.sum().clamp(min=1e-12), metrics
    return losses.mean(), metrics


def rating_regression(predictions: Tensor, targets: Tensor, mask: Tensor | None = None, *,
                      per_example: bool = False) -> tuple[Tensor, Metrics]:
    """Pointwise regression of named rating attributes (HelpSteer / UltraFeedback style; ArmoRM's
    first stage, Wang et al. 2024, arXiv:2406.12845, eq. 1 with a mask for missing ratings).

        loss = sum_{i,a} mask_ia (f_a(x_i, y_i) - s_ia)^2 / sum_{i,a} mask_ia

    predictions/targets: (B, A) for A attributes; mask: (B, A) bool, False where a response has
    no rating for that attribute (missing ratings are never read as 0). Every rated entry weighs
    the same, so a response with more rated attributes weighs more than one with fewer.
    per_example: return the (B,) sums sum_a mask_ia (f_a - s_ia)^2 instead; their sum divided by
    the number of rated entries (`rated_entries(mask)`) is the loss.
    Metrics: mse (the loss itself), and mae per the same mask.
    """
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ")
    mask = torch.ones_like(targets, dtype=torch.bool) if mask is None else mask
    w = mask.to(predictions.dtype)
    n = w.sum().clamp(min=1.0)
    err = (predictions - targets) * w
    per_response = (err**2).sum(-1)  # (B,)
    loss = per_response.sum() / n
    metrics = {"mse": loss.detach(), "mae": err.abs().sum().detach() / n}
    return (per_response if per_example else loss), metrics


def rated_entries(mask: Tensor) -> int:
    """The normaliser of `rating_regression`: the number of rated (response, attribute) entries."""
    return int(mask.sum())


def binary_feedback(logits: Tensor, labels: Tensor, *, pos_weight: float = 1.0,
                    per_example: bool = False) -> tuple[Tensor, Metrics]:
    """Thumbs-up classifier from unpaired binary feedback (RLUF's P[Love], arXiv:2505.14946).

        loss = -mean( w+ y log sigmoid(z) + (1 - y) log sigmoid(-z) )

    logits: (B,) z; labels: (B,) bool, True = desirable; pos_weight: w+ for rare positives.
    per_example: return the (B,) losses instead of their mean.
    Metrics: accuracy (sigmoid(z) > 0.5 agrees with the label), positive_rate (mean sigmoid(z)).
    """
    y = labels.to(logits.dtype)
    losses = -(pos_weight * y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits))
    metrics = {"accuracy": ((logits > 0) == labels.bool()).float().mean().detach(),
               "positive_rate": torch.sigmoid(logits).mean().detach()}
    return (losses if per_example else losses.mean()), metrics


def cost_model_loss(
    chosen_costs: Tensor,
    rejected_costs: Tensor,
    chosen_unsafe: Tensor,
    rejected_unsafe: Tensor,
    *,
    per_example: bool = False,
) -> tuple[Tensor, Metrics]:
    """Safe RLHF cost model (Dai et al. 2023, arXiv:2310.12773, eq. 6), with `chosen` the SAFER
    (less harmful) response of each pair and s = +1 for an unsafe response, -1 for a safe one:

        loss = -log sigmoid(C(y_r) - C(y_c)) - log sigmoid(s_c C(y_c)) - log sigmoid(s_r C(y_r))

    The first term orders the pair by harm; the sign terms anchor cost 0 at the safety boundary,
    so C > 0 reads as "unsafe". chosen_costs/rejected_costs: (B,); *_unsafe: (B,) bool.
    Metrics: accuracy (pairs with C(y_r) > C(y_c)), sign_accuracy (sign of C matches the label).
    """
    s_c = chosen_unsafe.to(chosen_costs.dtype) * 2 - 1
    s_r = rejected_unsafe.to(rejected_costs.dtype) * 2 - 1
    losses = (-F.logsigmoid(rejected_costs - chosen_costs) - F.logsigmoid(s_c * chosen_costs)
              - F.logsigmoid(s_r * rejected_costs))
    signs = torch.cat([(chosen_costs > 0) == chosen_unsafe.bool(), (rejected_costs > 0) == rejected_unsafe.bool()])
    metrics = {"accuracy": (rejected_costs > chosen_costs).float().mean().detach(),
               "sign_accuracy": signs.float().mean().detach()}
    return (losses if per_example else losses.mean()), metrics


def gated_bradley_terry(
    chosen_attributes: Tensor,
    rejected_attributes: Tensor,
    chosen_gate_logits: Tensor,
    rejected_gate_logits: Tensor,
    log_beta: Tensor,
    *,
    per_example: bool = False,
) -> tuple[Tensor, Metrics]:
    """ArmoRM's second stage (Wang et al. 2024, "Interpretable Preferences via Multi-Objective Reward
    Modeling and Mixture-of-Experts", arXiv:2406.12845, sec. 3.2): with the attribute rewards r_i
    fixed, a prompt-conditioned gate g(x) = softmax(z(x)) mixes them into one score, trained with
    a Bradley-Terry loss whose logits carry a learned scaling beta:

        R(x, y) = sum_i g(x)_i r_i(x, y)
        loss    = -log sigmoid( beta (R(x, y_c) - R(x, y_r)) ),      beta = exp(log_beta)

    chosen_attributes/rejected_attributes: (B, A) attribute rewards r_i, constants of this stage
    (detached here, as the paper freezes the attribute heads and the backbone).
    chosen_gate_logits/rejected_gate_logits: (B, A) gate logits z read for each response (the
    same prompt feature for both when the gate reads the prompt alone, as for causal backbones).
    log_beta: () the log of the scaling beta (learned with the gate; log space keeps beta > 0).
    Deviation: the paper also removes each attribute's correlation with verbosity before mixing;
    not done here (docs/reward_models.md).

    Returns the mean (or (B,) losses with per_example=True) and detached metrics: accuracy (share
    with R_c > R_r), margin_mean (mean R_c - R_r), beta.
    """
    chosen_scores = (torch.softmax(chosen_gate_logits, -1) * chosen_attributes.detach()).sum(-1)  # (B,)
    rejected_scores = (torch.softmax(rejected_gate_logits, -1) * rejected_attributes.detach()).sum(-1)  # (B,)
    diff = chosen_scores - rejected_scores
    losses = -F.logsigmoid(log_beta.exp() * diff)
    metrics = {"accuracy": (diff > 0).float().mean().detach(), "margin_mean": diff.mean().detach(),
               "beta": log_beta.exp().detach()}
    return (losses if per_example else losses.mean()), metrics
