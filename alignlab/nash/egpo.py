"""Extragradient preference optimization (EGPO; arXiv:2503.08942).

Exact (tabular) step, extragradient on the beta-regularized game in its multiplicative form:

    pi_{t+1/2} ∝ pi_t^(1 - eta beta) pi_ref^(eta beta) exp(eta P(. > pi_t))
    pi_{t+1}   ∝ pi_t^(1 - eta beta) pi_ref^(eta beta) exp(eta P(. > pi_{t+1/2}))

Sampled step (what drives a neural policy): the online IPO loss, i.e.
`alignlab.losses.preference.ipo` on pairs y, y' ~ sg(pi_theta) labelled by the preference source,

    loss(theta) = E (log pi_theta(y_w)/pi_ref(y_w) - log pi_theta(y_l)/pi_ref(y_l) - 1/(2 beta))^2,

whose expected gradient vanishes exactly at pi ∝ pi_ref exp(P(. > pi) / beta) (IPO's regression
identity with the pairs drawn from the policy itself), minimized by the extragradient rule
`extragradient_step`: a look-ahead step theta' = theta - lr g(theta), then theta <- theta - lr g(theta'),
with fresh pairs sampled from pi_theta' for g(theta').
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

from alignlab.lab.preference_bandit import PreferenceBandit
from alignlab.losses.preference import ipo
from alignlab.nash.tabular import NashBanditConfig, NashState, decayed, pick, sampled_pairs

PAPER = "Extragradient Preference Optimization (EGPO) (arXiv:2503.08942)"


def extragradient_step(parameters: Iterable[torch.nn.Parameter], loss_at: Callable[[], Tensor], lr: float) -> None:
    """theta <- theta - lr grad L(theta - lr grad L(theta)), in place. `loss_at()` computes the loss at
    the current parameters (sampling its own pairs: a language-model loop samples from the policy
    inside it). Works for any module's parameters; plain SGD steps, as in the paper's analysis."""
    params = [p for p in parameters if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    grads = torch.autograd.grad(loss_at(), params)
    with torch.no_grad():
        for p, grad in zip(params, grads):
            p -= lr * grad
    grads = torch.autograd.grad(loss_at(), params)  # at the look-ahead point
    with torch.no_grad():
        for p, start, grad in zip(params, saved, grads):
            p.copy_(start - lr * grad)


def exact_step(game: PreferenceBandit, state: NashState, cfg: NashBanditConfig, g: torch.Generator) -> Tensor:
    base = (1 - cfg.eta * game.beta) * state.logps + cfg.eta * game.beta * game.reference_logps
    half = torch.log_softmax(base + cfg.eta * game.win_rates(state.logps), -1)
    return torch.log_softmax(base + cfg.eta * game.win_rates(half), -1)


def sampled_step(game: PreferenceBandit, state: NashState, cfg: NashBanditConfig, g: torch.Generator) -> Tensor:
    logits = torch.nn.Parameter(state.logps.clone())
    P = logits.shape[0]

    def loss_at() -> Tensor:
        logps = torch.log_softmax(logits, -1)
        chosen, rejected, weights = sampled_pairs(game, logps, cfg, g)  # pairs ~ sg(pi_theta)
        losses, _ = ipo(pick(logps, chosen), pick(logps, rejected), pick(game.reference_logps, chosen),
                        pick(game.reference_logps, rejected), beta=game.beta, per_example=True)
        return P * (weights.reshape(-1) * losses).sum() / weights.sum()

    extragradient_step([logits], loss_at, decayed(cfg, state))
    return torch.log_softmax(logits.detach(), -1)
