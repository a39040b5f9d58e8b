"""Pairwise preference losses: the DPO family (dpo, ipo, cdpo, hinge), f-DPO (fdpo_js, fdpo_fkl,
fdpo_alpha) and the reference-free simpo and cpl.

All of them have one call shape, so the trainer calls them alike:

    fn(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
       reference_rejected_logps, *, beta, <own options>, per_example=False) -> (loss, metrics)

- Log-probs are (B,) sums of response-token log-probs. Reference-free losses (simpo, cpl) take
  the reference arguments in the same positions, may get None there, and ignore them.
- Reference log-probs are detached here: they are constants of every objective below, so a
  reference tensor that still carries a graph (same model with the adapter disabled, a forgotten
  no_grad) never receives gradient.
- `loss` is the batch mean; `per_example=True` returns the (B,) losses instead (the loop weights
  them itself for exact gradient accumulation).
- `metrics` are detached scalars: rewards/chosen, rewards/rejected (means of the implicit rewards,
  beta * (policy - reference) for the losses that have a reference), rewards/margins and
  rewards/accuracy (fraction of pairs whose chosen reward is strictly higher).
- Options are explicit keywords: a misspelt option is a TypeError, never silently dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Metrics = dict[str, Tensor]

# f-DPO's forward-KL and alpha rewards grow like exp(-log-ratio); see _exp_difference.
_MAX_EXPONENT = 50.0


def _check_pair(*logps: Tensor | None) -> None:
    """All given log-prob tensors are (B,) and of one shape: a (B, 1) slipped in would broadcast
    the pairwise difference to (B, B) and give a silently wrong mean."""
    shapes = [tuple(t.shape) for t in logps if t is not None]
    if len(shapes[0]) != 1 or len(set(shapes)) != 1:
        raise ValueError(f"pairwise losses take (B,) log-probs of one shape; got shapes {shapes}")


def _logratios(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None,
    reference_rejected_logps: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """(log pi/pi_ref of chosen, of rejected), (B,) each, with the reference detached."""
    if reference_chosen_logps is None or reference_rejected_logps is None:
        raise ValueError("this loss needs reference log-probs (its LossSpec has needs_reference=True)")
    _check_pair(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    return (
        policy_chosen_logps - reference_chosen_logps.detach(),
        policy_rejected_logps - reference_rejected_logps.detach(),
    )


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")


def _output(
    losses: Tensor, chosen_rewards: Tensor, rejected_rewards: Tensor, per_example: bool
) -> tuple[Tensor, Metrics]:
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
    }
    return (losses if per_example else losses.mean()), metrics


def dpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    per_example: bool = False,
) -> tuple[Tensor, Metrics]:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290, eq. 7).

        loss = -log sigmoid(beta * h),  h = (pi_c - ref_c) - (pi_r - ref_r)

    pi_c/pi_r = policy_chosen_logps/policy_rejected_logps, ref_c/ref_r = the reference ones,
    all (B,) summed log-probs; beta is the KL strength (paper: 0.1). Returns the batch mean (or
    the (B,) losses with per_example=True) and the metrics of the module docstring.
    """
    chosen, rejected = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    _check_positive("beta", beta)
    losses = -F.logsigmoid(beta * (chosen - rejected))  # (B,)
    return _output(losses, beta * chosen, beta * rejected, per_example)


def ipo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    per_example: bool = False,
) -> tuple[Tensor, Metrics]:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", arXiv:2310.12036, its sampled loss).

        loss = (h - 1 / (2 * beta))^2,  h = (pi_c - ref_c) - (pi_r - ref_r)

    beta is the paper's tau (regularisation strength). A regression, not a classification: the
    loss is smallest at h = 1/(2 beta), so raising pi_c lowers it only while h < 1/(2 beta).

    Deviation: h is taken from the log-probs as given, i.e. SUMMED over response tokens like every
    loss here. The IPO authors' later code and TRL average per token, which changes the scale of
    h (and so the useful range of beta) with response length; pass per-token means if you want
    that variant.
    """
    chosen, rejected = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    _check_positive("beta", beta)
    losses = (chosen - rejected - 1.0 / (2.0 * beta)) ** 2  # (B,)
    return _output(losses, beta * chosen, beta * rejected, per_example)


def cdpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.1,
    per_example: bool = False,
) -> tuple[Tensor, Metrics]:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"): DPO with the
    label flipped with probability epsilon = label_smoothing, in [0, 0.5].

        loss = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)

    h as in dpo. eps = 0 is dpo exactly. The note gives no default; 0.1 is ours.
    """
    chosen, rejected = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    _check_positive("beta", beta)
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    logits = beta * (chosen - rejected)  # (B,)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return _output(losses, beta * chosen, beta * rejected, per_example)


def hinge(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    per_example: bool = False,
) -> tuple[Tensor, Metrics]:
    """Hinge loss of SLiC-HF (Zhao et al. 2023, arXiv:2305.10425) in the reference-normalised form
    of RSO (Liu et al. 2023, arXiv:2309.06657), as in the DPO authors' code and TRL.

        loss = max(0, 1 - beta h),  h as in dpo

    Deviation from SLiC-HF: SLiC's calibration loss is max(0, delta - pi_c + pi_r) on the raw
    policy log-probs plus a cross-entropy regulariser toward the SFT targets; here the margin is
    on the reference-normalised h and delta = 1/beta, and the regulariser is left out (the
    reference normalisation plays its role). Zero gradient once beta h >= 1.
    """
    chosen, rejected = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    _check_positive("beta", beta)
    losses = torch.relu(1.0 - beta * (chosen - rejected))  # (B,)
    return _output(losses, beta * chosen, beta * rejected, per_example)


# --- f-DPO ("Beyond Reverse KL", Wang et al. 2023, arXiv:2309.16240) ---------------------------
#
# With an f-divergence regulariser the optimal policy gives the reward r = beta f'(u) + const,
# u = pi(y|x)/pi_ref(y|x) at the sequence level, so the Bradley-Terry loss is
#     loss = -log sigmoid(beta f'(u_c) - beta f'(u_r)).
# f'(u) per divergence (paper, Table 1), with L = log u the sequence log-ratio:
#     reverse KL  f = u log u                      f'(u) = log u + 1          -> DPO
#     forward KL  f = -log u                       f'(u) = -1/u = -exp(-L)
#     JS          f = u log u - (u+1) log((u+1)/2) f'(u) = log(2u/(1+u)) = log 2 + log sigmoid(L)
#     alpha       f = (u^(1-a) - (1-a)u - a)/(a(a-1)) f'(u) = (1 - u^-a)/a = (1 - exp(-aL))/a
# Everything below works on L, never on u = exp(L), which overflows for |L| > ~88 in float32.


def _exp_difference(a: Tensor, b: Tensor) -> Tensor:
    """exp(a) - exp(b), elementwise, without overflow.

    Factoring out m = max(a, b) leaves a bracket in [-1, 1]; the result is exact, value and
    gradient, while m <= _MAX_EXPONENT. Beyond it (a sequence log-ratio below -50 nats under
    forward KL) the true value would overflow the loss, so the scale exp(m) is capped: the value
    shrinks by exp(_MAX_EXPONENT - m) but keeps its sign, and the gradient keeps its direction.
    """
    m = torch.maximum(a, b).detach()  # the expression is invariant in m, so m needs no gradient
    return torch.exp(m.clamp(max=_MAX_EXPONENT)) * (torch.exp(a - m) - torch.exp(b - m))


def _f_prime_difference(chosen: Tensor, rejected: Tensor, divergence: str, alpha: float | None = None) -> Tensor:
    """f'(u_c) - f'(u_r) from the sequence log-ratios chosen = log u_c, rejected = log u_r, (B,)."""
    if divergence == "reverse_kl":
        return chosen - rejected
    if divergence == "js":  # the log 2 cancels
        return F.logsigmoid(chosen) - F.logsigmoid(rejected)
    if divergence == "forward_kl":
        return _exp_difference(-rejected, -chosen)
    if divergence == "alpha":
        return _exp_difference(-alpha * rejected, -alpha * chosen) / alpha
    raise ValueError(f"unknown divergence {divergence!r}")


def _fdpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    divergence: str,
    alpha: float | None = None,
    per_example: bool,
) -> tuple[Tensor, Metrics]:
    chosen, rejected = _logratios(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps
    )
    _check_positive("beta", beta)
    losses = -F.logsigmoid(beta * _f_prime_difference(chosen, rejected, divergence, alpha))  # (B,)
    # Metrics report beta * log-ratio like every reference-based loss (comparable across losses);
    # f' is increasing, so the accuracy is the same as with beta * f'(u).
    return _output(losses, beta * chosen, beta * rejected, per_example)


def fdpo_js(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    per_example: bool = False,
) -> tuple[Tensor, Metrics]:
    """f-DPO with the Jensen-Shannon divergence (arXiv:2309.16240, Table 1).

        loss = -log sigmoid(beta (f'(u_c) - f'(u_r))),  f'(u) = log(2u / (1 + u))
        computed as beta (log sigmoid(L_c) - log sigmoid(L_r)),  L = pi - ref  (B,)

    The JS reward saturates at log 2 as u grows, so a chosen response far above the reference
    (L_c >> 0) stops being pushed up: the gradient vanishes like exp(-L_c).
    """
    return _fdpo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                 beta=beta, divergence="js", per_example=per_example)


def fdpo_fkl(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    per_example: bool = False,
) -> tuple[Tensor, Metrics]:
    """f-DPO with the forward KL divergence (arXiv:2309.16240, Table 1).

        loss = -log sigmoid(beta (f'(u_c) - f'(u_r))),  f'(u) = -1/u
        computed as beta (exp(-L_r) - exp(-L_c)),  L = pi - ref  (B,)

    Deviation: the reward is unbounded below (-1/u -> -inf as the policy drops a response), so at
    log-ratios under -50 nats the exponential scale is capped (see _exp_difference) to keep the
    loss finite; below that the loss is exact.
    """
    return _fdpo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                 beta=beta, divergence="forward_kl", per_example=per_example)


def fdpo_alpha(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float,
    alpha: float = 0.5,
    per_example: bool = False,
) -> tuple[Tensor, Metrics]:
    """f-DPO with the alpha-divergence (arXiv:2309.16240, Table 1), alpha in (0, 1].

        loss = -log sigmoid(beta (f'(u_c) - f'(u_r))),  f'(u) = (1 - u^-alpha) / alpha
        computed as (beta / alpha) (exp(-alpha L_r) - exp(-alpha L_c)),  L = pi - ref  (B,)

    alpha -> 0 recovers reverse KL (DPO), alpha = 1 is forward KL (fdpo_fkl) up to a constant
    in f' that cancels. The paper sweeps alpha in (0, 1) and names no single default; 0.5 is ours.
    Same exponent cap as fdpo_fkl for log-ratios under -50/alpha nats.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    return _fdpo(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                 beta=beta, divergence="alpha", alpha=alpha, per_example=per_example)


# --- reference-free ------------------------------------------------------------------------------


def simpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None = None,
    reference_rejected_logps: Tensor | None = None,
    *,
    beta: float,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    gamma: float = 0.5,
    per_example: bool = False,
) -> tuple[Tensor, Metrics]:
    """SimPO (Meng et al. 2024, arXiv:2405.14734, eq. 6), reference-free.

        loss = -log sigmoid(beta/|y_c| pi_c - beta/|y_r| pi_r - gamma)

    |y_c|, |y_r| = chosen_lengths, rejected_lengths: (B,) response token counts (> 0); beta is the
    reward scale (authors' configs: 2.0-2.5), gamma the target reward margin (tuned per model in
    the paper, up to 1.6 in the released configs; 0.5 is the authors' code default,
    gamma/beta = 0.25 at beta = 2). The reference arguments are ignored (None is fine). Metrics
    use SimPO's own reward, beta * pi / |y|.
    """
    _check_pair(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths)
    _check_positive("beta", beta)
    if not (bool((chosen_lengths > 0).all()) and bool((rejected_lengths > 0).all())):
        raise ValueError("simpo needs response lengths > 0")
    chosen_rewards = beta * policy_chosen_logps / chosen_lengths.to(policy_chosen_logps.dtype)  # (B,)
    rejected_rewards = beta * policy_rejected_logps / rejected_lengths.to(policy_rejected_logps.dtype)  # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return _output(losses, chosen_rewards, rejected_rewards, per_example)


def cpl(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor | None = None,
    reference_rejected_logps: Tensor | None = None,
    *,
    beta: float,
    lambda_: float = 0.5,
    per_example: bool = False,
) -> tuple[Tensor, Metrics]:
    """Contrastive Preference Learning with its conservative bias (Hejna et al. 2023,
    arXiv:2310.13639: the CPL loss and its conservative CPL(lambda) variant), at the sequence level.

        A = beta * sum_t log pi(a_t | s_t)            (the discounted advantage, gamma = 1)
        loss = -log [exp(A_c) / (exp(A_c) + exp(lambda_ A_r))]
             = -log sigmoid(beta pi_c - lambda_ beta pi_r)

    Mapping: beta is CPL's temperature alpha (authors' configs: 0.1); lambda_ is the bias
    lambda in (0, 1] on the rejected segment (authors' configs: 0.5; 1 is the unbiased loss).
    Because log pi <= 0, lambda < 1 raises the rejected term, so the loss is lowered more by
    raising pi_c than by driving pi_r to -inf; this is the conservative regulariser that keeps
    the optimum on in-distribution responses for finite offline data (the paper's argument).
    Reference-free: the reference arguments are ignored. Not implemented: the optional BC term
    of CPL-BC (add an SFT loss on the chosen responses instead).
    """
    _check_pair(policy_chosen_logps, policy_rejected_logps)
    _check_positive("beta", beta)
    if not 0.0 < lambda_ <= 1.0:
        raise ValueError(f"lambda_ must be in (0, 1], got {lambda_}")
    chosen_advantages = beta * policy_chosen_logps  # (B,)
    rejected_advantages = beta * policy_rejected_logps  # (B,)
    losses = -F.logsigmoid(chosen_advantages - lambda_ * rejected_advantages)
    return _output(losses, chosen_advantages, rejected_advantages, per_example)
