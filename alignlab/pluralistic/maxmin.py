"""MaxMin-RLHF (Chakraborty et al. 2024, arXiv:2402.08925): a mixture of Bradley-Terry reward
models learned by EM, one per discovered user group, and the egalitarian max-min policy.

Reward mixture. Group g has a linear reward r_g(y) = w_g . phi(y) and prior pi_g; user u belongs
to one group, so all of u's pairs share it. EM on the users' labels:

    E-step  q(g | u) ∝ pi_g prod_{i in u} sigmoid(r_g(y_c,i) - r_g(y_r,i))     (losses.pluralistic.group_posterior)
    M-step  w_g = argmin_w -sum_i q(g | u(i)) log sigmoid(w . (phi(y_c,i) - phi(y_r,i))) + l2 ||w||^2
            pi_g = mean_u q(g | u)

(the paper's hard assignment is argmax_g q(g | u); the soft version is used for the M-step).
EM from a random start can merge groups, so the start is the users' own ridge Bradley-Terry
weights, normalized and clustered by k-means (several seeded k-means++ restarts).

Max-min policy. With the group rewards centered under the reference (policy.center_rewards),

    max_pi min_g E_pi[r_g] - beta KL(pi || pi_ref)
      = min_{lambda in simplex} max_pi sum_g lambda_g E_pi[r_g] - beta KL      (concave-convex: minimax)
      = min_lambda D(lambda),   D(lambda) = beta E_x log sum_y pi_ref(y|x) exp(sum_g lambda_g r_g(x, y) / beta)

with pi_lambda = pi_ref exp(sum_g lambda_g r_g / beta) / Z the inner maximizer and
dD/dlambda_g = E_{pi_lambda}[r_g] (Danskin). D is convex; `maxmin_policy` minimizes it by mirror
descent (exponentiated gradient) on the simplex and reports the duality gap
D(lambda) - min_g (E_{pi_lambda}[r_g]) + beta KL(pi_lambda || pi_ref) >= 0, which bounds how far
pi_lambda's objective is from the optimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignlab.losses.pluralistic import group_posterior, maxmin_objective
from alignlab.pluralistic.pairs import PairData, fit_linear_bt
from alignlab.pluralistic.policy import kl_policy


@dataclass
class MixtureRM:
    weights: Tensor
    """(G, D) w_g of each group's linear reward."""
    posterior: Tensor
    """(U, G) q(g | u) of each training user."""
    log_prior: Tensor
    """(G,) log pi_g."""
    iterations: int
    """EM iterations run."""

    def rewards(self, features: Tensor) -> Tensor:
        """(G, ...) r_g of features (..., D)."""
        return torch.einsum("gd,...d->g...", self.weights, features)

    def user_group(self) -> Tensor:
        """(U,) each user's most likely group (the paper's hard assignment)."""
        return self.posterior.argmax(-1)


def per_user_weights(data: PairData, l2: float, max_iter: int = 200) -> Tensor:
    """(U, D) each user's own ridge Bradley-Terry weights (users without pairs: zeros): the
    minimizer of sum_u [mean_{i in u} -log sigmoid(w_u . (phi_c - phi_r)) + l2 ||w_u||^2], which
    separates into one ridge logistic regression per user, solved jointly by L-BFGS."""
    W = torch.zeros(data.n_users, data.chosen.shape[1], dtype=torch.float64, requires_grad=True)
    diff = (data.chosen - data.rejected).double()  # (N, D)
    count = torch.bincount(data.user, minlength=data.n_users).double()
    scale = 1.0 / count[data.user]  # (N,) 1 / |pairs of the user|
    opt = torch.optim.LBFGS([W], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        margin = (W[data.user] * diff).sum(-1)
        loss = -(scale * torch.nn.functional.logsigmoid(margin)).sum() + l2 * W.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach().float()


def kmeans(points: Tensor, k: int, *, seed: int = 0, restarts: int = 8, iters: int = 50) -> Tensor:
    """(N,) cluster labels of the lowest-inertia run of k-means++ (Arthur & Vassilvitskii 2007)."""
    g = torch.Generator().manual_seed(seed)
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        centers = points[torch.randint(len(points), (1,), generator=g)]
        while len(centers) < k:  # k-means++: next center drawn proportional to squared distance
            d2 = torch.cdist(points, centers).min(1).values.pow(2)
            nxt = torch.multinomial(d2 + 1e-12, 1, generator=g) if d2.sum() > 0 else torch.randint(len(points), (1,), generator=g)
            centers = torch.cat([centers, points[nxt]])
        for _ in range(iters):
            labels = torch.cdist(points, centers).argmin(1)
            centers = torch.stack([points[labels == j].mean(0) if (labels == j).any() else centers[j] for j in range(k)])
        inertia = float(torch.cdist(points, centers).min(1).values.pow(2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def fit_mixture(data: PairData, n_groups: int, *, iters: int = 50, l2: float = 1e-3, init_l2: float = 0.1,
                seed: int = 0) -> MixtureRM:
    """EM for the mixture of `n_groups` linear Bradley-Terry rewards (module docstring); stops
    when no user's hard assignment changes between iterations (after at least 2)."""
    if not 1 <= n_groups <= data.n_users:
        raise ValueError(f"n_groups must be in [1, {data.n_users}] (the users), got {n_groups}")
    own = per_user_weights(data, init_l2)
    own = own / own.norm(dim=1, keepdim=True).clamp_min(1e-8)
    posterior = torch.nn.functional.one_hot(kmeans(own, n_groups, seed=seed), n_groups).float()  # (U, G)
    previous, it = None, 0
    for it in range(1, iters + 1):
        weights = torch.stack([fit_linear_bt(data.chosen, data.rejected, posterior[data.user, g] + 1e-8, l2=l2)
                               for g in range(n_groups)])  # M-step, (G, D)
        log_prior = posterior.mean(0).clamp_min(1e-8).log()
        posterior = group_posterior(data.chosen @ weights.T, data.rejected @ weights.T, data.user,
                                    data.n_users, log_prior)  # E-step, (U, G)
        hard = posterior.argmax(-1)
        if previous is not None and it >= 2 and torch.equal(hard, previous):
            break
        previous = hard
    return MixtureRM(weights, posterior, posterior.mean(0).clamp_min(1e-8).log(), it)


@dataclass
class MaxMinSolution:
    logps: Tensor
    """(P, K) log pi of the max-min policy."""
    group_weights: Tensor
    """(G,) lambda: the dual weights of the groups (positive on the groups that bind)."""
    value: float
    """min_g E_pi[r_g] - beta KL(pi || pi_ref) of `logps`."""
    gap: float
    """Duality gap D(lambda) - value >= 0: an upper bound on the policy's shortfall from the optimum."""
    steps: int


def maxmin_policy(reference_logps: Tensor, group_rewards: Tensor, beta: float, *, steps: int = 20_000,
                  tol: float = 1e-7) -> MaxMinSolution:
    """The max-min policy on a pool by exponentiated-gradient descent on the dual (module docstring).

    reference_logps: (P, K); group_rewards: (G, P, K), as given (center them first if their
    shifts are arbitrary). The step is beta / span(r)^2 (D's gradient is Lipschitz with constant
    at most span(r)^2 / beta); the run stops when the duality gap is below `tol`."""
    ref, r = reference_logps.double(), group_rewards.double()
    G = r.shape[0]
    span = float((r.amax(-1) - r.amin(-1)).max().clamp_min(1e-8))
    lr = beta / span**2  # safe step; grown while the dual keeps falling (backtracking), halved when not

    def evaluate(lam):
        logps = kl_policy(ref, torch.einsum("g,gpk->pk", lam, r), beta)
        value, metrics = maxmin_objective(logps, ref, r, beta=beta)
        dual = float(beta * torch.logsumexp(ref + torch.einsum("g,gpk->pk", lam, r) / beta, -1).mean())
        return logps, float(value), metrics["group_values"], dual

    lam = torch.full((G,), 1.0 / G, dtype=torch.float64)
    logps, value, grad, dual = evaluate(lam)
    best = MaxMinSolution(logps.float(), lam.float(), value, dual - value, 0)
    for step in range(1, steps + 1):
        if best.gap < tol:
            break
        trial = lam * torch.exp(-lr * (grad - grad.min()))  # grad: (G,) dD/dlambda = E_pi[r_g]
        trial = trial / trial.sum()
        t_logps, t_value, t_grad, t_dual = evaluate(trial)
        if t_dual > dual + 1e-15 and lr > beta / span**2:
            lr = max(lr / 2, beta / span**2)
            continue
        lam, logps, value, grad, dual, lr = trial, t_logps, t_value, t_grad, t_dual, lr * 1.5
        if dual - value < best.gap:
            best = MaxMinSolution(logps.float(), lam.float(), value, dual - value, step)
    return best
