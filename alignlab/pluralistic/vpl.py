"""Variational Preference Learning (Poddar et al. 2024, arXiv:2408.10075): a reward model
conditioned on a latent user variable z, inferred from a few of that user's labelled pairs.

    encoder   h_i = MLP([phi(y_c,i), phi(y_r,i)])                 one embedding per context pair
              (mu_u, log sigma_u^2) = Linear(mean_{i in C_u} h_i)    permutation-invariant pooling
    posterior q(z | C_u) = N(mu_u, diag sigma_u^2),  prior p(z) = N(0, I)
    reward    r(y, z) = (w_0 + A z) . phi(y)
    loss      -E_q log sigmoid(r(y_c, z) - r(y_r, z)) over target pairs T_u + kl_weight KL(q || p)
              (losses.pluralistic.vpl_loss; one reparameterized sample z = mu + sigma * eps)

Each training step draws, per user, a context set C_u of `context_pairs` of its pairs and uses
the rest of its pairs as targets T_u (disjoint, so the encoder must generalize from the context).
At evaluation z = mu(C_u) with C_u all of the user's training pairs.

Deviations: the paper's reward is an MLP of [phi(y), z] on LLM embeddings; here the reward is
linear in the fixed features phi with weights that depend linearly on z (enough for users whose
gold rewards are linear in phi), and the KL weight is constant instead of annealed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from alignlab.losses.pluralistic import vpl_loss
from alignlab.pluralistic.pairs import PairData


class VPLRewardModel(nn.Module):
    def __init__(self, dim: int, latent: int = 4, hidden: int = 32):
        super().__init__()
        self.pair_encoder = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.to_posterior = nn.Linear(hidden, 2 * latent)
        self.base = nn.Parameter(torch.zeros(dim))  # w_0
        self.cond = nn.Linear(latent, dim, bias=False)  # A

    def encode(self, chosen: Tensor, rejected: Tensor, user: Tensor, n_users: int) -> tuple[Tensor, Tensor]:
        """(mu, logvar), each (U, latent), from context pairs (N, D) of users user (N,)."""
        h = self.pair_encoder(torch.cat([chosen, rejected], -1))  # (N, H)
        total = torch.zeros(n_users, h.shape[1], dtype=h.dtype).index_add(0, user, h)
        count = torch.zeros(n_users, dtype=h.dtype).index_add(0, user, torch.ones(len(user), dtype=h.dtype))
        mu, logvar = self.to_posterior(total / count.clamp_min(1)[:, None]).chunk(2, -1)
        return mu, logvar.clamp(-8, 4)

    def reward(self, features: Tensor, z: Tensor) -> Tensor:
        """r(y, z) = (w_0 + A z) . phi(y); features (..., D), z broadcastable to (..., latent)."""
        return ((self.base + self.cond(z)) * features).sum(-1)


def _context_mask(user: Tensor, n_users: int, context_pairs: int, g: torch.Generator) -> Tensor:
    """(N,) bool: `context_pairs` random pairs of each user (all but one if it has fewer)."""
    order = (user.double() + torch.rand(len(user), generator=g, dtype=torch.float64)).argsort()  # by user, shuffled
    count = torch.bincount(user, minlength=n_users)  # (U,)
    start = torch.cumsum(count, 0) - count
    rank = torch.empty_like(user)
    rank[order] = torch.arange(len(user)) - start[user[order]]  # position of each pair within its user
    take = (count - 1).clamp(min=1).clamp(max=context_pairs)  # (U,)
    return rank < take[user]


def train_vpl(data: PairData, *, latent: int = 4, hidden: int = 32, context_pairs: int = 8, steps: int = 300,
              learning_rate: float = 2e-2, kl_weight: float = 0.01, seed: int = 0) -> VPLRewardModel:
    """Fit a VPLRewardModel on every user's pairs (full batch, Adam)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = VPLRewardModel(data.chosen.shape[1], latent, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    for _ in range(steps):
        ctx = _context_mask(data.user, data.n_users, context_pairs, g)
        mu, logvar = model.encode(data.chosen[ctx], data.rejected[ctx], data.user[ctx], data.n_users)
        z = mu + torch.randn(mu.shape, generator=g) * (0.5 * logvar).exp()  # (U, L)
        tgt = ~ctx
        zu = z[data.user[tgt]]
        loss, _ = vpl_loss(model.reward(data.chosen[tgt], zu), model.reward(data.rejected[tgt], zu), mu, logvar,
                           kl_weight=kl_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def infer_latents(model: VPLRewardModel, context: PairData) -> Tensor:
    """(U, latent) z_u = mu(C_u): the posterior mean from the user's labelled pairs."""
    return model.encode(context.chosen, context.rejected, context.user, context.n_users)[0]
