"""Loss terms of online iterative DPO (RLHF Workflow, arXiv:2405.07863) beyond the pairwise loss
itself: soft preference targets (OSP) and the exploration terms of XPO and VPO.

All take (B,) summed log-probs of whole responses. The pairwise loss is any DPO-family loss of
`alignlab.losses` (kind "pairwise"), called with per_example=True.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def soft_preference_loss(
    pairwise: Callable[..., tuple[Tensor, dict]],
    policy_a: Tensor,
    policy_b: Tensor,
    reference_a: Tensor | None,
    reference_b: Tensor | None,
    target: Tensor,
    *,
    beta: float,
    lengths_a: Tensor | None = None,
    lengths_b: Tensor | None = None,
    **options,
) -> tuple[Tensor, dict]:
    """A pairwise loss under a probabilistic label (Online Self-Preferring Language Models, OSP: its
    soft-preference cross-entropy, the judge's probability as the target instead of a hard label):

        loss = p * l(a ≻ b) + (1 - p) * l(b ≻ a),    p = target = P(a ≻ b)

    where l(c ≻ r) is the pairwise loss with c as the chosen response. For DPO this is the
    cross-entropy -[p log σ(βh) + (1 - p) log σ(-βh)], h the margin of implied rewards. A hard
    label (p = 1 or 0) gives the pairwise loss itself. Returns the (B,) losses and the pairwise
    loss's metrics for the (a, b) order."""
    if target.shape != policy_a.shape:
        raise ValueError(f"target must be one probability per pair, shape {tuple(policy_a.shape)}; got {tuple(target.shape)}")
    if not ((target >= 0) & (target <= 1)).all():
        raise ValueError("targets must be probabilities in [0, 1]")
    extra = {} if lengths_a is None else {"chosen_lengths": lengths_a, "rejected_lengths": lengths_b}
    forward, metrics = pairwise(policy_a, policy_b, reference_a, reference_b, beta=beta, per_example=True, **extra,
                                **options)
    if bool((target == 1).all()):
        return forward, metrics
    swapped = {} if lengths_a is None else {"chosen_lengths": lengths_b, "rejected_lengths": lengths_a}
    backward, _ = pairwise(policy_b, policy_a, reference_b, reference_a, beta=beta, per_example=True, **swapped,
                           **options)
    target = target.to(forward.dtype)
    return target * forward + (1 - target) * backward, metrics


def xpo_bonus(policy_logps: Tensor, *, alpha: float) -> Tensor:
    """XPO's exploration term (Xie et al. 2024, arXiv:2405.21046, Algorithm 1): added to the loss,

        alpha * log π(ỹ | x),    ỹ ~ π_ref

    Minimizing it lowers the policy's likelihood of the reference's own responses, pushing it to
    explore beyond the reference's support (optimism). (B,) per response."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    return alpha * policy_logps


def vpo_bonus(policy_logps: Tensor, reference_logps: Tensor, *, alpha: float, beta: float) -> Tensor:
    """VPO's value-incentive term in the online, optimistic setting (Cen et al. 2024,
    arXiv:2405.19320): with the DPO reparameterization r = β log π/π_ref + β log Z and the
    reward normalized so that E_{y~π_cal} r = 0, the optimal value is
    V = -E_{y~π_cal}[β log π(y|x)/π_ref(y|x)]; optimism maximizes α V, i.e. adds to the loss

        alpha * beta * (log π(ỹ | x) - log π_ref(ỹ | x)),    ỹ ~ π_cal = π_ref

    (B,) per response; the reference term is constant in the policy (its gradient is XPO's, scaled
    by β), and keeps the term's value interpretable as -α·V."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    return alpha * beta * (policy_logps - reference_logps.detach())


def round_robin_probabilities(prefer: Callable[[list[int], list[int]], Tensor], n: int, groups: int) -> Tensor:
    """(G, n, n) matrix P[g, i, j] = P(y_i ≻ y_j) within each group of n responses, from one
    batched call `prefer(first_rows, second_rows)` over the n(n-1)/2 pairs i < j of every group
    (rows are group-major: row = g * n + i); P[j, i] = 1 - P[i, j], P[i, i] = 1/2."""
    pairs = torch.triu_indices(n, n, offset=1)  # (2, n(n-1)/2)
    first = [g * n + int(i) for g in range(groups) for i in pairs[0]]
    second = [g * n + int(j) for g in range(groups) for j in pairs[1]]
    p = prefer(first, second).reshape(groups, -1) if first else torch.zeros(groups, 0)
    out = torch.full((groups, n, n), 0.5)
    out[:, pairs[0], pairs[1]] = p
    out[:, pairs[1], pairs[0]] = 1 - p
    return out


PAIR_RULES = ("best_worst", "best_random", "random")


def choose_pairs(probabilities: Tensor, rule: str, generator: torch.Generator) -> Tensor:
    """(G, 2) indices of the pair to train on in each group, from the (G, n, n) preference
    matrix: responses are ranked by their expected win rate against the group
    (Copeland-style soft wins, sum_j P[i, j]); ties go to the lower index.

    - best_worst: the highest- and the lowest-ranked (RLHF Workflow's rule);
    - best_random: the highest-ranked and a uniformly drawn other one;
    - random: two distinct responses drawn uniformly."""
    if rule not in PAIR_RULES:
        raise ValueError(f"unknown pair rule {rule!r}; valid: {', '.join(PAIR_RULES)}")
    G, n, _ = probabilities.shape
    if n < 2:
        raise ValueError("a pair needs at least 2 responses per group")
    wins = probabilities.sum(-1)  # (G, n)
    best = wins.argmax(-1)
    if rule == "best_worst":
        worst = torch.where(wins == wins.min(-1, keepdim=True).values, torch.arange(n).expand(G, n), n).min(-1).values
        other = torch.where(worst == best, (best + 1) % n, worst)  # all tied: any other (the pair is a tie)
    elif rule == "best_random":
        other = (best + torch.randint(1, n, (G,), generator=generator)) % n
    else:
        best = torch.randint(0, n, (G,), generator=generator)
        other = (best + torch.randint(1, n, (G,), generator=generator)) % n
    return torch.stack([best, other], -1)
