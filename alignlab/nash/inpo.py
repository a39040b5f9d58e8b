"""Iterative Nash Policy Optimization (INPO; Zhang et al. 2024, arXiv:2407.00617, Alg. 1).

Iteration t: pairs y, y' ~ pi_t, labelled by the preference source; pi_{t+1} minimizes
`alignlab.losses.nash.inpo_loss`

    ( log pi(y_w)/pi(y_l) - (1 - eta beta) log pi_t(y_w)/pi_t(y_l) - eta beta log pi_ref(y_w)/pi_ref(y_l) - eta/2 )^2

whose minimizer over all policies is online mirror descent (no-regret) on the regularized game,

    pi_{t+1} ∝ pi_t^(1 - eta beta) pi_ref^(eta beta) exp(eta P(. > pi_t)),

without estimating any win rate. Exact step: the loss over every pair, weighted by pi_t(y) pi_t(y')
P(y > y'), minimized exactly (`fit_pairs`; tests check it equals the closed form); sampled step: `samples`
sampled pairs per prompt.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignlab.lab.preference_bandit import PreferenceBandit
from alignlab.losses.nash import inpo_loss
from alignlab.nash.tabular import NashBanditConfig, NashState, all_pairs, fit_pairs, pick, sampled_pairs

PAPER = "Iterative Nash Policy Optimization (Zhang et al. 2024, arXiv:2407.00617)"


def mirror_descent_step(game: PreferenceBandit, logps: Tensor, eta: float) -> Tensor:
    """The closed-form minimizer: log softmax((1 - eta beta) log pi_t + eta beta log pi_ref + eta P(. > pi_t))."""
    return torch.log_softmax((1 - eta * game.beta) * logps + eta * game.beta * game.reference_logps
                             + eta * game.win_rates(logps), -1)


def fit(game: PreferenceBandit, previous: Tensor, chosen: Tensor, rejected: Tensor, weights: Tensor,
        eta: float) -> Tensor:
    """pi_{t+1}: the tabular policy minimizing the weighted INPO loss on (P, n) pairs."""
    prev_c, prev_r = pick(previous, chosen), pick(previous, rejected)
    ref_c, ref_r = pick(game.reference_logps, chosen), pick(game.reference_logps, rejected)

    def loss(logps: Tensor) -> Tensor:
        return inpo_loss(pick(logps, chosen), pick(logps, rejected), prev_c, prev_r, ref_c, ref_r,
                         beta=game.beta, eta=eta, weights=weights.reshape(-1))[0]

    return fit_pairs(previous, loss, chosen, rejected, weights)


def exact_step(game: PreferenceBandit, state: NashState, cfg: NashBanditConfig, g: torch.Generator) -> Tensor:
    return fit(game, state.logps, *all_pairs(game, state.logps), cfg.eta)


def sampled_step(game: PreferenceBandit, state: NashState, cfg: NashBanditConfig, g: torch.Generator) -> Tensor:
    return fit(game, state.logps, *sampled_pairs(game, state.logps, cfg, g), cfg.eta)
