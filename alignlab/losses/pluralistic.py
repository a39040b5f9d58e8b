"""Losses and updates of pluralistic reward models: pure functions of rewards.

- `group_posterior`: the E-step of MaxMin-RLHF's mixture of Bradley-Terry models.
- `gaussian_kl`, `vpl_loss`: Variational Preference Learning's evidence lower bound.
- `personalized_bt_loss`: P-RLHF's Bradley-Terry loss with the individual embeddings' penalty.
- `maxmin_objective`: the egalitarian policy objective min_g E_pi[r_g] - beta KL(pi || pi_ref).

The M-step of the mixture is the weighted Bradley-Terry loss (alignlab.losses.reward.bradley_terry
with `weights`). The models that use these are in alignlab.pluralistic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Metrics = dict[str, Tensor]


def group_posterior(chosen_rewards: Tensor, rejected_rewards: Tensor, user: Tensor, n_users: int,
                    log_prior: Tensor) -> Tensor:
    """E-step of MaxMin-RLHF's EM for its reward mixture (Chakraborty et al. 2024, arXiv:2402.08925):
    the posterior of each *user's* group from the likelihood of all of that user's pairs under each group's
    Bradley-Terry model,

        log q(g | u) = log pi_g + sum_{i: user(i) = u} log sigmoid(r_g(y_c,i) - r_g(y_r,i)) - log Z_u

    chosen_rewards/rejected_rewards: (N, G) r_g of each pair's chosen / rejected response under each
    of G group reward models; user: (N,) long user index in [0, n_users); log_prior: (G,) log pi_g.
    Returns (n_users, G) posteriors (rows sum to 1; a user with no pairs gets the prior). The paper
    assigns each user to its most likely group (hard EM); `argmax` of these rows is that.
    """
    loglik = F.logsigmoid(chosen_rewards - rejected_rewards)  # (N, G)
    per_user = torch.zeros(n_users, loglik.shape[1], dtype=loglik.dtype, device=loglik.device)
    per_user = per_user.index_add(0, user, loglik)  # (U, G)
    return torch.softmax(per_user + log_prior.to(loglik.dtype), dim=-1)


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, diag exp(logvar)) || N(0, I)) per row: 1/2 sum_d (mu^2 + sigma^2 - log sigma^2 - 1).
    mean/logvar: (B, D); returns (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - logvar - 1.0).sum(-1)


def vpl_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, mean: Tensor, logvar: Tensor, *,
             kl_weight: float = 1.0) -> tuple[Tensor, Metrics]:
    """Negative evidence lower bound of VPL's latent-variable reward model (Poddar et al. 2024,
    arXiv:2408.10075), one sample of z per user:

        loss = -mean_i log sigmoid(r(y_c,i, z_u(i)) - r(y_r,i, z_u(i))) + kl_weight * mean_u KL(q(z|u) || N(0, I))

    with z_u = mu_u + sigma_u * eps drawn by the caller from q(z | the user's context pairs).
    chosen_rewards/rejected_rewards: (N,) rewards of the target pairs under their user's z;
    mean/logvar: (U, D) the encoder's q(z | u) for the U users of the batch. kl_weight: beta of the
    ELBO (the paper anneals it; a constant here). Metrics: bt (the likelihood term), kl, accuracy.
    """
    bt = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    kl = gaussian_kl(mean, logvar).mean()
    metrics = {"bt": bt.detach(), "kl": kl.detach(),
               "accuracy": (chosen_rewards > rejected_rewards).float().mean().detach()}
    return bt + kl_weight * kl, metrics


def personalized_bt_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, individual: Tensor, *,
                         l2: float = 0.0) -> tuple[Tensor, Metrics]:
    """P-RLHF's personalized reward loss (Li et al. 2024, arXiv:2402.05133): Bradley-Terry on rewards
    personalized by the user embedding e_u = e_0 + o_u, plus a ridge penalty that keeps each
    user's individual part o_u small, so that a user with few pairs stays near the generic e_0:

        loss = -mean_i log sigmoid(r(y_c,i, e_u(i)) - r(y_r,i, e_u(i))) + l2 * mean_u ||o_u||^2

    chosen_rewards/rejected_rewards: (N,); individual: (U, D) the individual embeddings o_u.
    Deviation: the paper trains the generic e_0 by dropping user ids at random; the penalty here
    plays that role (it shrinks every o_u towards the shared e_0).
    """
    bt = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    penalty = individual.pow(2).sum(-1).mean()
    metrics = {"bt": bt.detach(), "individual_norm2": penalty.detach(),
               "accuracy": (chosen_rewards > rejected_rewards).float().mean().detach()}
    return bt + l2 * penalty, metrics


def maxmin_objective(logps: Tensor, reference_logps: Tensor, group_rewards: Tensor, *,
                     beta: float) -> tuple[Tensor, Metrics]:
    """MaxMin-RLHF's egalitarian (max-min social choice) objective (arXiv:2402.08925) on a
    candidate pool, to maximize:

        J(pi) = min_g  E_x E_{y ~ pi(.|x)} [r_g(x, y)]  -  beta E_x KL(pi(.|x) || pi_ref(.|x))

    logps/reference_logps: (P, K) log pi and log pi_ref over each prompt's K candidates;
    group_rewards: (G, P, K) r_g. Returns J and metrics: group_values (G,) E[r_g] (before the KL),
    kl. (The KL is the same for every group, so the min is taken over E[r_g].)
    """
    probs = logps.exp()  # (P, K)
    values = (group_rewards * probs).sum(-1).mean(-1)  # (G,)
    kl = (probs * (logps - reference_logps)).sum(-1).mean()
    return values.min() - beta * kl, {"group_values": values.detach(), "kl": kl.detach()}
