"""Nash learning from general preferences: the losses, as pure functions of log-probs and
preference probabilities, so that one implementation drives both the tabular preference bandit
(alignlab.lab.preference_bandit) and a language-model policy.

The interface a language-model online loop calls (all log-probs are (B,) per-sequence sums, the
reference ones detached by the caller or here):

- Nash-MD (arXiv:2312.00886): sample y ~ pi_theta and an opponent y' ~ pi^mu, the token-level
  geometric mixture `geometric_mixture_logps(policy_logits, reference_logits, mixture_coef)`; ask
  the preference source p = P(y > y'); `nash_md_loss(policy_logps, reference_logps, p, beta=)`.
- Nash-MP (arXiv:2505.19731): the same with the proximal anchor pi_k:
  `nash_mp_loss(policy_logps, anchor_logps, reference_logps, p, beta=, eta=)`, opponents drawn from
  pi_k for the half step and from pi_{k+1/2} for the full step.
- INPO (arXiv:2407.00617): pairs (y, y') ~ pi_t labelled chosen/rejected by the preference source;
  `inpo_loss(policy_c, policy_r, previous_c, previous_r, reference_c, reference_r, beta=, eta=)`,
  minimized to convergence each iteration, then pi_t <- pi_theta.
- MNPO (arXiv:2509.23102): pairs from the population mixture, `mnpo_loss(..., opponents_c (B, m),
  opponents_r (B, m), ..., opponent_weights=)`; INPO is the population of one.
- EGPO (arXiv:2503.08942): pairs ~ pi_theta (online), labelled; the IPO loss
  `alignlab.losses.preference.ipo(policy_c, policy_r, reference_c, reference_r, beta=)` (no new
  loss: online IPO), minimized by the extragradient rule `alignlab.nash.egpo.extragradient_step`.
- SPO (arXiv:2401.04056): n samples per prompt, the (B, n, n) preference matrix among them;
  `self_play_rewards(p)` is each sample's win rate, the reward for any online RL trainer (with
  its KL penalty beta, the fixed point is the regularized Nash equilibrium).

beta is the KL strength toward the reference everywhere (tau in the Nash-MD, INPO and EGPO papers).
"""

from __future__ import annotations

import torch
from torch import Tensor

Metrics = dict[str, Tensor]


def _check(*tensors: Tensor) -> None:
    shapes = [tuple(t.shape) for t in tensors]
    if len(shapes[0]) != 1 or len(set(shapes)) != 1:
        raise ValueError(f"Nash losses take (B,) log-probs and preferences of one shape; got shapes {shapes}")


def geometric_mixture_logps(policy_logps: Tensor, reference_logps: Tensor, mixture_coef: float) -> Tensor:
    """Nash-MD's opponent (Munos et al. 2023, arXiv:2312.00886, eq. 5):

        log pi^mu = log softmax((1 - m) log pi + m log pi_ref)

    over the last dimension: a (P, K) table, or (B, T, V) next-token logits (the paper samples the
    language-model mixture token by token, sec. 7). m = mixture_coef in [0, 1]."""
    if not 0.0 <= mixture_coef <= 1.0:
        raise ValueError(f"mixture_coef must be in [0, 1], got {mixture_coef}")
    return torch.log_softmax((1 - mixture_coef) * policy_logps + mixture_coef * reference_logps, -1)


def nash_md_loss(policy_logps: Tensor, reference_logps: Tensor, preference_probs: Tensor, *,
                 beta: float) -> tuple[Tensor, Metrics]:
    """Nash-MD policy gradient (Munos et al. 2023, arXiv:2312.00886, sec. 7, Nash-MD-PG):

        loss = -mean[ sg(P(y > y') - 1/2 - beta (log pi(y) - log pi_ref(y))) * log pi(y) ]

    y ~ pi_theta, y' ~ pi^mu (`geometric_mixture_logps`), preference_probs = P(y > y') (or a 0/1
    label), all (B,). Its gradient is an unbiased estimate of grad_theta [P(pi_theta > pi^mu) -
    beta KL(pi_theta || pi_ref)] (score function; the 1/2 is a baseline)."""
    _check(policy_logps, reference_logps, preference_probs)
    advantages = (preference_probs - 0.5 - beta * (policy_logps - reference_logps)).detach()  # (B,)
    return -(advantages * policy_logps).mean(), {"nash/advantage": advantages.mean(),
                                                 "nash/win_rate": preference_probs.detach().float().mean()}


def nash_mp_loss(policy_logps: Tensor, anchor_logps: Tensor, reference_logps: Tensor, preference_probs: Tensor, *,
                 beta: float, eta: float) -> tuple[Tensor, Metrics]:
    """One proximal step of Nash Mirror Prox (arXiv:2505.19731, eq. 4) by policy gradient:

        pi_next = argmax_pi  P(pi > opp) - beta KL(pi || pi_ref) - KL(pi || pi_k) / eta
        loss = -mean[ sg(P(y > y') - 1/2 - beta log(pi/pi_ref)(y) - log(pi/pi_k)(y) / eta) * log pi(y) ]

    y ~ pi_theta, y' ~ opp (pi_k for the half step, pi_{k+1/2} for the full one), anchor_logps =
    log pi_k(y), all (B,). The exact maximizer is pi_next ∝ (pi_k pi_ref^(eta beta) exp(eta
    P(. > opp)))^(1 / (1 + eta beta)) (`alignlab.nash.mirror_prox.prox_step`)."""
    _check(policy_logps, anchor_logps, reference_logps, preference_probs)
    advantages = (preference_probs - 0.5 - beta * (policy_logps - reference_logps)
                  - (policy_logps - anchor_logps) / eta).detach()  # (B,)
    return -(advantages * policy_logps).mean(), {"nash/advantage": advantages.mean()}


def mnpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, opponents_chosen_logps: Tensor,
              opponents_rejected_logps: Tensor, reference_chosen_logps: Tensor, reference_rejected_logps: Tensor, *,
              beta: float, eta: float, opponent_weights: Tensor, weights: Tensor | None = None,
              ) -> tuple[Tensor, Metrics]:
    """Multiplayer Nash preference optimization with a population of past policies
    (arXiv:2509.23102; with one opponent, INPO's loss, arXiv:2407.00617, eq. 9):

        h(y, y') = log pi(y)/pi(y') - (1 - eta beta) sum_j lambda_j log pi_j(y)/pi_j(y')
                   - eta beta log pi_ref(y)/pi_ref(y')
        loss = sum_b w_b (h(y_w, y_l) - eta / 2)^2 / sum_b w_b

    (y_w, y_l) labelled pairs drawn from the population mixture sum_j lambda_j pi_j;
    opponents_*: (B, m) log pi_j of the chosen/rejected responses; opponent_weights lambda: (m,),
    summing to 1; weights w: optional (B,) pair weights (1 each by default). Minimized over all
    policies, h(y, y') = eta (P(y > rho) - P(y' > rho)) with rho the mixture (IPO's regression
    identity, arXiv:2310.12036, Prop. 3), i.e. the multiplicative-weights step

        log pi_{t+1} = (1 - eta beta) sum_j lambda_j log pi_j + eta beta log pi_ref + eta P(. > rho) + c,

    whose fixed point (all pi_j equal) is the beta-regularized Nash equilibrium. Deviation: the
    paper's time-dependent MNPO weights past iterates by its own schedule; here lambda is given."""
    _check(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    if opponents_chosen_logps.shape != (len(policy_chosen_logps), len(opponent_weights)) or \
            opponents_rejected_logps.shape != opponents_chosen_logps.shape:
        raise ValueError(f"opponent log-probs must be (B, m) = ({len(policy_chosen_logps)}, {len(opponent_weights)}); "
                         f"got {tuple(opponents_chosen_logps.shape)} and {tuple(opponents_rejected_logps.shape)}")
    if not 0 < eta * beta <= 1:
        raise ValueError(f"need 0 < eta * beta <= 1, got eta={eta}, beta={beta}")
    lam = opponent_weights.to(policy_chosen_logps.dtype).detach()
    opponents = (opponents_chosen_logps - opponents_rejected_logps).detach() @ lam  # (B,)
    reference = (reference_chosen_logps - reference_rejected_logps).detach()  # (B,)
    h = (policy_chosen_logps - policy_rejected_logps) - (1 - eta * beta) * opponents - eta * beta * reference
    losses = (h - eta / 2) ** 2  # (B,)
    w = torch.ones_like(losses) if weights is None else weights.detach().to(losses.dtype)
    return (w * losses).sum() / w.sum(), {"nash/h": h.detach().mean()}


def inpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, previous_chosen_logps: Tensor,
              previous_rejected_logps: Tensor, reference_chosen_logps: Tensor, reference_rejected_logps: Tensor, *,
              beta: float, eta: float, weights: Tensor | None = None) -> tuple[Tensor, Metrics]:
    """INPO (Zhang et al. 2024, arXiv:2407.00617, eq. 9), pairs drawn from the previous iterate pi_t:

        loss = ( log pi(y_w)/pi(y_l) - (1 - eta beta) log pi_t(y_w)/pi_t(y_l)
                 - eta beta log pi_ref(y_w)/pi_ref(y_l) - eta / 2 )^2

    previous_* = log pi_t, (B,). Its minimizer is online mirror descent's step pi_{t+1} ∝
    pi_t^(1 - eta beta) pi_ref^(eta beta) exp(eta P(. > pi_t)), with no win rate estimated.
    `mnpo_loss` with the population {pi_t}."""
    return mnpo_loss(policy_chosen_logps, policy_rejected_logps, previous_chosen_logps[:, None],
                     previous_rejected_logps[:, None], reference_chosen_logps, reference_rejected_logps,
                     beta=beta, eta=eta, opponent_weights=torch.ones(1), weights=weights)


def inpo_pair_losses(policy_a_logps: Tensor, policy_b_logps: Tensor, previous_a_logps: Tensor,
                     previous_b_logps: Tensor, reference_a_logps: Tensor, reference_b_logps: Tensor,
                     target: Tensor, *, beta: float, eta: float) -> Tensor:
    """INPO's loss (Zhang et al. 2024, arXiv:2407.00617, eq. 9) per pair, in expectation over the
    label: with h = log pi(a)/pi(b) - (1 - eta beta) log pi_t(a)/pi_t(b) - eta beta log pi_ref(a)/pi_ref(b)
    and p = P(a > b) the label's probability (1 or 0 for a hard label),

        loss = p (h - eta/2)^2 + (1 - p) (-h - eta/2)^2,

    i.e. `inpo_loss` on (a, b) when a won and on (b, a) when b won, averaged under p. All (B,)
    sequence log-probs; previous_* (pi_t, the policy that sampled the pair) and reference_* are
    constants. Returns (B,)."""
    if not 0 < eta * beta <= 1:
        raise ValueError(f"need 0 < eta * beta <= 1, got eta={eta}, beta={beta}")
    _check(policy_a_logps, policy_b_logps, reference_a_logps, reference_b_logps)
    previous = (previous_a_logps - previous_b_logps).detach()
    reference = (reference_a_logps - reference_b_logps).detach()
    h = (policy_a_logps - policy_b_logps) - (1 - eta * beta) * previous - eta * beta * reference
    p = target.detach().to(h.dtype)
    return p * (h - eta / 2) ** 2 + (1 - p) * (-h - eta / 2) ** 2


def self_play_rewards(preference_probs: Tensor) -> Tensor:
    """SPO's reward (Swamy et al. 2024, arXiv:2401.04056, Alg. 1): the win rate of each of a
    prompt's n samples against the others,

        r(y_i) = 1/(n - 1) sum_{j != i} P(y_i > y_j),

    preference_probs: (B, n, n) P(y_i > y_j) (or 0/1 labels); returns (B, n). Unbiased for
    P(y_i > pi), so with a KL penalty beta the regularized policy gradient's fixed point is
    pi ∝ pi_ref exp(P(. > pi) / beta), the regularized Nash equilibrium."""
    if preference_probs.dim() != 3 or preference_probs.shape[1] != preference_probs.shape[2] \
            or preference_probs.shape[1] < 2:
        raise ValueError(f"self_play_rewards takes (B, n, n) preferences with n >= 2; got {tuple(preference_probs.shape)}")
    n = preference_probs.shape[1]
    off_diagonal = 1 - torch.eye(n, dtype=preference_probs.dtype, device=preference_probs.device)
    return (preference_probs * off_diagonal).sum(-1) / (n - 1)
