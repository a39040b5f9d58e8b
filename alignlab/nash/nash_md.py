"""Nash-MD (Munos et al. 2023, "Nash Learning from Human Feedback", arXiv:2312.00886, eq. 5-6).

Exact (tabular) step, with m = mixture_coef (the paper: m = eta * beta):

    log pi^mu_t = log softmax((1 - m) log pi_t + m log pi_ref)        (geometric mixture)
    log pi_{t+1} = log softmax(log pi^mu_t + eta P(. > pi^mu_t))       (mirror step against it)

Its fixed point pi^mu is the equilibrium of regularization m / ((1 - m) eta), about beta for small
eta: a constant step leaves an O(eta) bias (the paper's guarantee uses eta_t -> 0), measured in
tests/test_nash_algorithms.py. Sampled step: `alignlab.losses.nash.nash_md_loss` on y ~ pi_t
against y' ~ pi^mu_t, one gradient step on the logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignlab.lab.preference_bandit import PreferenceBandit
from alignlab.losses.nash import geometric_mixture_logps, nash_md_loss
from alignlab.nash.tabular import NashBanditConfig, NashState, decayed, gradient_step, pick

PAPER = "Nash Learning from Human Feedback (Munos et al. 2023, arXiv:2312.00886)"


def mixture(game: PreferenceBandit, logps: Tensor, cfg: NashBanditConfig) -> Tensor:
    m = cfg.eta * game.beta if cfg.mixture_coef is None else cfg.mixture_coef
    return geometric_mixture_logps(logps, game.reference_logps, m)


def exact_step(game: PreferenceBandit, state: NashState, cfg: NashBanditConfig, g: torch.Generator) -> Tensor:
    opponent = mixture(game, state.logps, cfg)
    return torch.log_softmax(opponent + cfg.eta * game.win_rates(opponent), -1)


def sampled_step(game: PreferenceBandit, state: NashState, cfg: NashBanditConfig, g: torch.Generator) -> Tensor:
    ys = game.sample(state.logps, cfg.samples, g)  # (P, n) y ~ pi_t
    opponents = game.sample(mixture(game, state.logps, cfg), cfg.samples, g)  # (P, n) y' ~ pi^mu_t
    p = game.prefer(ys, opponents)
    if cfg.feedback == "label":
        p = game.label(ys, opponents, g).double()
    P = ys.shape[0]

    def loss(logps: Tensor) -> Tensor:  # summed over prompts, so the step per prompt does not shrink with P
        return P * nash_md_loss(pick(logps, ys), pick(game.reference_logps, ys), p.reshape(-1), beta=game.beta)[0]

    return gradient_step(state.logps, loss, decayed(cfg, state))
