"""Personalized RLHF, P-RLHF (Li et al. 2024, arXiv:2402.05133): a user model of embeddings
(a generic part shared by all users plus an individual part per user) that feeds a personalized
reward model; the policy is conditioned on the user.

    user model   e_u = e_0 + o_u                         e_0 generic (shared), o_u individual (init 0)
    reward       r(y, u) = (W e_u) . phi(y)              W: (D, E)
    loss         Bradley-Terry on r(., u(i)) + l2 mean_u ||o_u||^2     (losses.pluralistic.personalized_bt_loss)
    policy       pi_u(y|x) ∝ pi_ref(y|x) exp(r(y, u) / beta)          (policy.kl_policy, per user)

A new user with no pairs gets e_0, the generic reward. Deviations: the paper's personalized LLM
takes e_u as soft prompt tokens and is trained with a personalized DPO loss; here the reward is a
linear head on fixed response features phi and the user-conditioned policy is the exact
KL-regularized policy of each user's reward on the candidate pool. The generic part is kept
shared by the ridge on o_u instead of the paper's random dropping of user ids.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from alignlab.losses.pluralistic import personalized_bt_loss
from alignlab.pluralistic.pairs import PairData


class PersonalizedRewardModel(nn.Module):
    def __init__(self, dim: int, n_users: int, embed: int = 4):
        super().__init__()
        self.generic = nn.Parameter(torch.randn(embed) / embed**0.5)  # e_0
        self.individual = nn.Parameter(torch.zeros(n_users, embed))  # o_u
        self.head = nn.Parameter(torch.randn(dim, embed) * 0.1)  # W

    def user_embedding(self, user: Tensor | None) -> Tensor:
        """e_u = e_0 + o_u, (N, E); user None: e_0, (E,) (the generic user)."""
        return self.generic if user is None else self.generic + self.individual[user]

    def reward(self, features: Tensor, user: Tensor | None) -> Tensor:
        """r(y, u); features (..., D), user (...) long or None (generic)."""
        return (features * (self.user_embedding(user) @ self.head.T)).sum(-1)


def train_prlhf(data: PairData, *, embed: int = 4, steps: int = 300, learning_rate: float = 5e-2,
                l2: float = 0.01, seed: int = 0) -> PersonalizedRewardModel:
    """Fit a PersonalizedRewardModel on every user's pairs (full batch, Adam)."""
    torch.manual_seed(seed)
    model = PersonalizedRewardModel(data.chosen.shape[1], data.n_users, embed)
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    for _ in range(steps):
        loss, _ = personalized_bt_loss(model.reward(data.chosen, data.user), model.reward(data.rejected, data.user),
                                       model.individual, l2=l2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
