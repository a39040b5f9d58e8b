"""Reward-based methods on the preference bandit, for comparison with the Nash methods: fit one
Bradley-Terry reward to the same preferences and take the KL-optimal policy, or run DPO on pairs
sampled from pi_ref. On intransitive preferences no reward reproduces P, and both end away from
the regularized Nash equilibrium; `alignlab lab nash-bandit` reports how far.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alignlab.lab.preference_bandit import PreferenceBandit
from alignlab.losses import get_loss


def bradley_terry_reward(game: PreferenceBandit) -> Tensor:
    """(P, K) r maximizing the expected Bradley-Terry log-likelihood of the preferences on pairs
    y, y' ~ pi_ref: sum pi_ref(y) pi_ref(y') P(y > y') log sigmoid(r_y - r_y') (full information:
    the limit of infinitely many labelled pairs), centred per prompt."""
    pi = game.reference_logps.exp()
    weights = pi[:, :, None] * pi[:, None, :] * game.preferences  # (P, K, K)
    r = torch.zeros_like(game.reference_logps, requires_grad=True)
    opt = torch.optim.LBFGS([r], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -(weights * torch.nn.functional.logsigmoid(r[:, :, None] - r[:, None, :])).sum()
        loss.backward()
        return loss

    opt.step(closure)
    r = r.detach()
    return r - r.mean(-1, keepdim=True)


def reward_policy(game: PreferenceBandit, rewards: Tensor) -> Tensor:
    """The KL-optimal policy of a reward: log softmax(log pi_ref + r / beta)."""
    return torch.log_softmax(game.reference_logps + rewards / game.beta, -1)


def dpo_policy(game: PreferenceBandit, *, pairs: int = 64, steps: int = 400, learning_rate: float = 0.1,
               seed: int = 0) -> Tensor:
    """DPO (the `dpo` loss of the loss table, beta = the game's beta) on `pairs` pairs per prompt
    per step drawn from pi_ref and labelled by Bernoulli(P(y > y')); Adam, learning rate decayed
    linearly to 0. Returns the (P, K) log-probs."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.nn.Parameter(game.reference_logps.clone())
    opt = torch.optim.Adam([logits], lr=learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    dpo = get_loss("dpo")
    for _ in range(steps):
        first, second = game.sample(game.reference_logps, pairs, g), game.sample(game.reference_logps, pairs, g)
        wins = game.label(first, second, g)
        chosen, rejected = torch.where(wins, first, second), torch.where(wins, second, first)
        logps = torch.log_softmax(logits, -1)
        loss, _ = dpo(torch.gather(logps, 1, chosen).reshape(-1), torch.gather(logps, 1, rejected).reshape(-1),
                      torch.gather(game.reference_logps, 1, chosen).reshape(-1),
                      torch.gather(game.reference_logps, 1, rejected).reshape(-1), beta=game.beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return torch.log_softmax(logits.detach(), -1)
