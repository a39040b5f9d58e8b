"""What the Nash methods share on the preference bandit: the settings, the iterate state, all
pairs of responses as a weighted batch (full information), sampled pairs (the preference source),
and minimizing a pair loss over a tabular policy (INPO's and MNPO's per-iteration fit).

A tabular policy is a (P, K) table of log-probs; a method's step maps the state to the next one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from alignlab.lab.preference_bandit import PreferenceBandit


@dataclass
class NashBanditConfig:
    method: str = "nash_md"
    iterations: int = 300
    eta: float = 0.5
    """Mirror-descent step size (eta in every paper); eta * beta <= 1."""
    mixture_coef: float | None = None
    """Nash-MD's geometric-mixture weight on pi_ref (None: eta * beta, the paper's choice)."""
    sampled: bool = False
    """False: full information (exact win rates / every pair weighted by its probability);
    True: `samples` sampled responses or pairs per prompt per iteration, scored by the bandit's
    preference source."""
    samples: int = 64
    feedback: str = "probability"
    """Sampled feedback: "probability" (the source's P(y > y')) or "label" (a Bernoulli draw)."""
    learning_rate: float = 0.5
    """Gradient step of the gradient-based methods (EGPO, SPO, sampled Nash-MD), decayed
    linearly to 0 when sampled."""
    population: int = 4
    """MNPO: how many past iterates (the current one included) play as opponents."""
    seed: int = 0
    history_every: int = 10
    extra: dict = field(default_factory=dict)


@dataclass
class NashState:
    logps: Tensor
    """(P, K) log pi_t, float64."""
    iteration: int = 0
    population: list = field(default_factory=list)
    """MNPO: past iterates, newest last."""


def all_pairs(game: PreferenceBandit, logps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every ordered pair (y, y') per prompt as (chosen, rejected), weighted by the probability
    that y, y' ~ pi and the annotator prefers y: pi(y) pi(y') P(y > y'). Returns (P, K*K) chosen,
    rejected and weights."""
    P, K = logps.shape
    chosen = torch.arange(K).repeat_interleave(K).expand(P, -1)
    rejected = torch.arange(K).repeat(K).expand(P, -1)
    pi = logps.detach().exp()
    weights = (pi[:, :, None] * pi[:, None, :] * game.preferences).reshape(P, K * K)
    return chosen, rejected, weights


def sampled_pairs(game: PreferenceBandit, logps: Tensor, cfg: NashBanditConfig,
                  g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """`samples` pairs y, y' ~ pi per prompt, each entered both ways round with weights
    P(y > y') and 1 - P ("probability" feedback) or the labelled order with weight 1 ("label")."""
    first, second = game.sample(logps, cfg.samples, g), game.sample(logps, cfg.samples, g)
    if cfg.feedback == "label":
        wins = game.label(first, second, g)
        return torch.where(wins, first, second), torch.where(wins, second, first), torch.ones(first.shape).double()
    p = game.prefer(first, second)
    return torch.cat([first, second], 1), torch.cat([second, first], 1), torch.cat([p, 1 - p], 1)


def pick(logps: Tensor, index: Tensor) -> Tensor:
    """(P, n) log pi(index) from a (P, K) table, flattened to (P*n,)."""
    return torch.gather(logps, 1, index).reshape(-1)


def fit_pairs(init_logps: Tensor, loss_fn, chosen: Tensor, rejected: Tensor, weights: Tensor,
              newton_steps: int = 2) -> Tensor:
    """argmin over tabular policies of loss_fn(logps), a pair regression sum_b w_b (z_w - z_l - t_b)^2
    / sum_b w_b on the (P, n) pairs `chosen`, `rejected` with weights w (INPO's and MNPO's losses:
    log pi(y_w) - log pi(y_l) = z_w - z_l for logits z). Quadratic in z, with the Hessian
    2 D^T diag(w) D / sum w (D: +1 at y_w, -1 at y_l per pair), so a Newton step with its
    pseudo-inverse (null space: each prompt's constant shift and responses no pair touches) is the
    exact minimizer; the gradient comes from loss_fn itself, a second step removes round-off."""
    shape, (P, K) = init_logps.shape, init_logps.shape
    rows = torch.arange(chosen.numel())
    offset = (torch.arange(P)[:, None] * K).expand_as(chosen).reshape(-1)
    D = torch.zeros(chosen.numel(), P * K, dtype=init_logps.dtype)
    D.index_put_((rows, offset + chosen.reshape(-1)), torch.ones(len(rows), dtype=D.dtype), accumulate=True)
    D.index_put_((rows, offset + rejected.reshape(-1)), -torch.ones(len(rows), dtype=D.dtype), accumulate=True)
    w = weights.reshape(-1).to(D.dtype)
    inverse = torch.linalg.pinv(2 * D.T @ (w[:, None] * D) / w.sum(), hermitian=True, rtol=1e-10)  # (P*K, P*K)
    z = init_logps.detach().reshape(-1).clone()
    for _ in range(newton_steps):
        z.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(torch.log_softmax(z.reshape(shape), -1)), z)
        z = z.detach() - inverse @ grad
    return torch.log_softmax(z.reshape(shape), -1)


def gradient_step(logps: Tensor, loss_fn, lr: float) -> Tensor:
    """One gradient step on the logits of a tabular policy: log softmax(z - lr grad loss(z))."""
    logits = logps.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(torch.log_softmax(logits, -1)), logits)
    return torch.log_softmax(logits.detach() - lr * grad, -1)


def decayed(cfg: NashBanditConfig, state: NashState) -> float:
    """The learning rate, decayed linearly to 0 over the iterations when sampled (a settled last
    iterate under noise); constant with full information."""
    return cfg.learning_rate * (1 - state.iteration / cfg.iterations) if cfg.sampled else cfg.learning_rate
