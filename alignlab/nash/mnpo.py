"""Multiplayer Nash Preference Optimization (MNPO; Wu et al. 2025, arXiv:2509.23102), with the
population of the last m iterates as opponents (its time-dependent variant).

Iteration t: the population {pi_{t-m+1}, ..., pi_t} with weights lambda (uniform here), its
mixture rho = sum_j lambda_j pi_j; pairs y, y' ~ rho labelled by the preference source; pi_{t+1}
minimizes `alignlab.losses.nash.mnpo_loss`, whose minimizer is

    log pi_{t+1} = (1 - eta beta) sum_j lambda_j log pi_j + eta beta log pi_ref + eta P(. > rho) + c.

With m = 1 it is INPO. Its fixed point is the beta-regularized equilibrium. Deviation: the paper
weights the past iterates by its own schedule; here they are weighted equally.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignlab.lab.preference_bandit import PreferenceBandit
from alignlab.losses.nash import mnpo_loss
from alignlab.nash.tabular import NashBanditConfig, NashState, all_pairs, fit_pairs, pick, sampled_pairs

PAPER = "Multiplayer Nash Preference Optimization (Wu et al. 2025, arXiv:2509.23102)"


def population(state: NashState, cfg: NashBanditConfig) -> tuple[list[Tensor], Tensor]:
    """The opponents (the last `population` iterates, this one included) and their weights."""
    members = (state.population + [state.logps])[-cfg.population:]
    return members, torch.full((len(members),), 1.0 / len(members), dtype=torch.float64)


def closed_form_step(game: PreferenceBandit, members: list[Tensor], lam: Tensor, eta: float) -> Tensor:
    """The minimizer of the module docstring, (P, K)."""
    stacked = torch.stack(members, -1)  # (P, K, m)
    rho = torch.log((stacked.exp() * lam).sum(-1))
    return torch.log_softmax((1 - eta * game.beta) * (stacked @ lam) + eta * game.beta * game.reference_logps
                             + eta * game.win_rates(rho), -1)


def fit(game: PreferenceBandit, members: list[Tensor], lam: Tensor, chosen: Tensor, rejected: Tensor,
        weights: Tensor, eta: float) -> Tensor:
    opp_c = torch.stack([pick(m, chosen) for m in members], -1)  # (B, m)
    opp_r = torch.stack([pick(m, rejected) for m in members], -1)
    ref_c, ref_r = pick(game.reference_logps, chosen), pick(game.reference_logps, rejected)

    def loss(logps: Tensor) -> Tensor:
        return mnpo_loss(pick(logps, chosen), pick(logps, rejected), opp_c, opp_r, ref_c, ref_r, beta=game.beta,
                         eta=eta, opponent_weights=lam, weights=weights.reshape(-1))[0]

    return fit_pairs(members[-1], loss, chosen, rejected, weights)


def _rho(members: list[Tensor], lam: Tensor) -> Tensor:
    return torch.log((torch.stack(members, -1).exp() * lam).sum(-1))


def exact_step(game: PreferenceBandit, state: NashState, cfg: NashBanditConfig, g: torch.Generator) -> Tensor:
    members, lam = population(state, cfg)
    return fit(game, members, lam, *all_pairs(game, _rho(members, lam)), cfg.eta)


def sampled_step(game: PreferenceBandit, state: NashState, cfg: NashBanditConfig, g: torch.Generator) -> Tensor:
    members, lam = population(state, cfg)
    return fit(game, members, lam, *sampled_pairs(game, _rho(members, lam), cfg, g), cfg.eta)
