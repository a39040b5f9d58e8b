"""Self-play preference optimization (SPO; Swamy et al. 2024, "A Minimaximalist Approach to
Reinforcement Learning from Human Feedback", arXiv:2401.04056, Alg. 1), regularized toward pi_ref.

n samples per prompt from the policy itself; each sample's reward is its win rate among them,
`alignlab.losses.nash.self_play_rewards` (unbiased for P(y > pi)); any online RL trainer then
maximizes E_pi[r] - beta KL(pi || pi_ref). The fixed point of that policy gradient is
pi ∝ pi_ref exp(P(. > pi) / beta), the regularized Nash equilibrium.

Exact step: the exact reward P(. > pi_t) and the exact softmax policy gradient,
z <- z + lr pi (A - E_pi A), A = P(. > pi_t) - beta log(pi_t / pi_ref). Sampled step: the
language-model trainers' own RLOO estimator with the KL as a k1 reward penalty
(`alignlab.losses.advantages.compute_advantages`) and surrogate (`clipped_surrogate`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignlab.lab.preference_bandit import PreferenceBandit
from alignlab.losses.advantages import compute_advantages
from alignlab.losses.nash import self_play_rewards
from alignlab.losses.policy import clipped_surrogate, kl_estimate
from alignlab.nash.tabular import NashBanditConfig, NashState, decayed, gradient_step

PAPER = "A Minimaximalist Approach to Reinforcement Learning from Human Feedback (Swamy et al. 2024, arXiv:2401.04056)"


def exact_step(game: PreferenceBandit, state: NashState, cfg: NashBanditConfig, g: torch.Generator) -> Tensor:
    pi = state.logps.exp()
    advantages = game.win_rates(state.logps) - game.beta * (state.logps - game.reference_logps)
    return torch.log_softmax(state.logps + cfg.learning_rate * pi * (advantages - (pi * advantages).sum(-1, keepdim=True)), -1)


def sampled_step(game: PreferenceBandit, state: NashState, cfg: NashBanditConfig, g: torch.Generator) -> Tensor:
    P, n = state.logps.shape[0], cfg.samples
    ys = game.sample(state.logps, n, g)  # (P, n)
    i, j = ys[:, :, None].expand(-1, -1, n), ys[:, None, :].expand(-1, n, -1)
    probs = game.preferences[torch.arange(P)[:, None, None], i, j]  # (P, n, n) P(y_i > y_j)
    if cfg.feedback == "label":
        upper = (torch.rand(probs.shape, generator=g, dtype=torch.float64) < probs).double().triu(1)
        probs = upper + (1 - upper.transpose(1, 2)).tril(-1)  # one draw per pair: y_j > y_i exactly when not y_i > y_j
    rewards = self_play_rewards(probs).reshape(-1)  # (P*n,)
    old = torch.gather(state.logps, 1, ys).reshape(-1, 1)  # (B, 1) one-token responses
    ref = torch.gather(game.reference_logps, 1, ys).reshape(-1, 1)
    mask = torch.ones_like(old)
    advantages, _ = compute_advantages("rloo", rewards, mask, n=n, kl=kl_estimate(old, ref, "k1"),
                                       kl_coef=game.beta, gamma=1.0, lam=1.0)

    def loss(logps: Tensor) -> Tensor:
        new = torch.gather(logps, 1, ys).reshape(-1, 1)
        return P * clipped_surrogate(new, old, advantages, mask, clip_low=0.2)[0]

    return gradient_step(state.logps, loss, decayed(cfg, state))
