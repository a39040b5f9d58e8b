"""Nash Mirror Prox (Nash-MP; "Accelerating Nash Learning from Human Feedback via Mirror Prox",
arXiv:2505.19731, Alg. 1). Each step is two proximal steps from the same anchor pi_k:

    prox(pi_k, opp) = argmax_pi eta [P(pi > opp) - beta KL(pi || pi_ref)] - KL(pi || pi_k)
                    ∝ (pi_k pi_ref^(eta beta) exp(eta P(. > opp)))^(1 / (1 + eta beta))
    pi_{k+1/2} = prox(pi_k, pi_k),   pi_{k+1} = prox(pi_k, pi_{k+1/2})

Fixed point: the beta-regularized equilibrium, reached at a linear rate. Sampled step (the paper's
approximate Nash-MP): each prox by `inner` policy-gradient steps of `alignlab.losses.nash.nash_mp_loss`
(cfg.extra["inner"], default 4), opponents sampled from pi_k, then from pi_{k+1/2}.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignlab.lab.preference_bandit import PreferenceBandit
from alignlab.losses.nash import nash_mp_loss
from alignlab.nash.tabular import NashBanditConfig, NashState, decayed, gradient_step, pick

PAPER = "Accelerating Nash Learning from Human Feedback via Mirror Prox (arXiv:2505.19731)"


def prox_step(game: PreferenceBandit, anchor: Tensor, opponent: Tensor, eta: float) -> Tensor:
    """The closed-form proximal step of the module docstring, (P, K) log-probs."""
    scores = anchor + eta * game.beta * game.reference_logps + eta * game.win_rates(opponent)
    return torch.log_softmax(scores / (1 + eta * game.beta), -1)


def exact_step(game: PreferenceBandit, state: NashState, cfg: NashBanditConfig, g: torch.Generator) -> Tensor:
    half = prox_step(game, state.logps, state.logps, cfg.eta)
    return prox_step(game, state.logps, half, cfg.eta)


def _sampled_prox(game, anchor: Tensor, opponent: Tensor, cfg: NashBanditConfig, lr: float, g) -> Tensor:
    logps = anchor
    for _ in range(int(cfg.extra.get("inner", 4))):
        ys, opps = game.sample(logps, cfg.samples, g), game.sample(opponent, cfg.samples, g)
        p = game.label(ys, opps, g).double() if cfg.feedback == "label" else game.prefer(ys, opps)
        P = ys.shape[0]

        def loss(new: Tensor) -> Tensor:
            return P * nash_mp_loss(pick(new, ys), pick(anchor, ys), pick(game.reference_logps, ys), p.reshape(-1),
                                    beta=game.beta, eta=cfg.eta)[0]

        logps = gradient_step(logps, loss, lr)
    return logps


def sampled_step(game: PreferenceBandit, state: NashState, cfg: NashBanditConfig, g: torch.Generator) -> Tensor:
    lr = decayed(cfg, state)
    half = _sampled_prox(game, state.logps, state.logps, cfg, lr, g)
    return _sampled_prox(game, state.logps, half, cfg, lr, g)
