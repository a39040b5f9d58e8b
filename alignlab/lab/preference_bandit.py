"""A preference bandit: a known regularized Nash equilibrium to check Nash-learning algorithms against.

P prompts x K candidate responses, a general preference tensor

    preferences[x, y, y'] = P(y > y' | x),   P + P^T = 1 (so P(y > y) = 1/2),

which need not come from any reward (rock-paper-scissors cycles, random non-transitive matrices),
a reference policy pi_ref(y|x) and a regularization beta (tau in the NLHF papers). The
beta-regularized preference game (Munos et al. 2023, arXiv:2312.00886, sec. 3)

    max_pi min_pi'  P(pi > pi') - beta KL(pi || pi_ref) + beta KL(pi' || pi_ref)

is strongly monotone, so it has one equilibrium, symmetric, the fixed point of

    pi*(y|x) = pi_ref(y|x) exp(P(y > pi* | x) / beta) / Z(x),   P(y > pi) = sum_y' P(y > y') pi(y').

`nash_equilibrium` solves it to a residual below 1e-10 (damped fixed-point iteration, then Newton)
and reports the residual: max over prompts and responses of |log pi - log T(pi)|, T the right-hand
side above. Bradley-Terry matrices (P = sigmoid(r_y - r_y')) are here for contrast: their
preferences are transitive, yet the equilibrium is still not pi_ref exp(r / beta), the optimum of
the reward objective, because the game's payoff is a win probability, not a reward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Newton from pi_ref can diverge at small beta (measured: beta = 0.01 on random_intransitive); from a
# residual of 0.1 it converged on every family and beta in tests/test_lab_preference_bandit.py.
NEWTON_FROM = 0.1



def _reference(prompts: int, arms: int, g: torch.Generator) -> Tensor:
    """(P, K) log pi_ref: a random softmax policy, float64."""
    return torch.log_softmax(torch.randn(prompts, arms, generator=g, dtype=torch.float64), -1)


@dataclass
class PreferenceBandit:
    reference_logps: Tensor
    """(P, K) log pi_ref(y|x), float64."""
    preferences: Tensor
    """(P, K, K) P(y > y' | x); P + P^T = 1."""
    beta: float
    """KL strength of the regularized game (tau in Nash-MD, INPO and EGPO; beta in Nash-MP)."""

    def __post_init__(self):
        P = self.preferences
        if P.dim() != 3 or P.shape[1] != P.shape[2] or P.shape[:2] != self.reference_logps.shape:
            raise ValueError(f"preferences must be (P, K, K) matching reference_logps (P, K); got "
                             f"{tuple(P.shape)} and {tuple(self.reference_logps.shape)}")
        if (P - (1 - P.transpose(1, 2))).abs().max() > 1e-9 or P.min() < 0 or P.max() > 1:
            raise ValueError("preferences must be probabilities with P[x, y, y'] + P[x, y', y] = 1")
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")

    # --- constructors -------------------------------------------------------------------------------
    @classmethod
    def rock_paper_scissors(cls, prompts: int = 4, arms: int = 3, *, strength: float = 0.4, beta: float = 0.2,
                            seed: int = 0) -> "PreferenceBandit":
        """A cycle: response i beats i+1 (mod K) with probability 1/2 + strength, other pairs tie.
        With K = 3, rock-paper-scissors; every prompt has the same cycle and its own reference."""
        g = torch.Generator().manual_seed(seed)
        A = torch.zeros(arms, arms, dtype=torch.float64)
        for i in range(arms):
            A[i, (i + 1) % arms] += strength
            A[(i + 1) % arms, i] -= strength
        return cls(_reference(prompts, arms, g), (0.5 + A).expand(prompts, arms, arms).clone(), beta)

    @classmethod
    def random_intransitive(cls, prompts: int = 4, arms: int = 5, *, beta: float = 0.2, seed: int = 0,
                            cycle: float = 0.25) -> "PreferenceBandit":
        """P = 1/2 + A, A antisymmetric: uniform(-1/2, 1/2) entries, plus a `cycle`-strength
        rock-paper-scissors cycle over the first three responses (so that every prompt is
        non-transitive), clipped to [0, 1]."""
        g = torch.Generator().manual_seed(seed)
        reference = _reference(prompts, arms, g)
        U = torch.rand(prompts, arms, arms, generator=g, dtype=torch.float64) - 0.5
        A = torch.triu(U, 1)
        A = A - A.transpose(1, 2)
        for i in range(min(arms, 3)):
            j = (i + 1) % 3
            A[:, i, j] += cycle
            A[:, j, i] -= cycle
        return cls(reference, 0.5 + A.clamp(-0.5, 0.5), beta)

    @classmethod
    def bradley_terry(cls, prompts: int = 4, arms: int = 5, *, scale: float = 1.0, beta: float = 0.2,
                      seed: int = 0) -> "PreferenceBandit":
        """Transitive: P(y > y') = sigmoid(r_y - r_y'), r ~ scale * N(0, 1)."""
        g = torch.Generator().manual_seed(seed)
        reference = _reference(prompts, arms, g)
        r = scale * torch.randn(prompts, arms, generator=g, dtype=torch.float64)
        return cls(reference, torch.sigmoid(r[:, :, None] - r[:, None, :]), beta)

    # --- the game -----------------------------------------------------------------------------------
    def win_rates(self, logps: Tensor) -> Tensor:
        """(P, K) P(y > pi | x) = sum_y' P(y > y') pi(y'|x), for (P, K) log pi."""
        return (self.preferences.to(logps.dtype) @ logps.exp()[..., None])[..., 0]

    def best_response_logps(self, logps: Tensor) -> Tensor:
        """T(pi) = log softmax(log pi_ref + P(. > pi) / beta): the regularized best response."""
        return torch.log_softmax(self.reference_logps.to(logps.dtype) + self.win_rates(logps) / self.beta, -1)

    def residual(self, logps: Tensor) -> float:
        """max |log pi - T(pi)|: 0 exactly at the equilibrium."""
        return float((logps - self.best_response_logps(logps)).abs().max())

    def nash_equilibrium(self, tol: float = 1e-10, max_iter: int = 20000) -> tuple[Tensor, float]:
        """(log pi*, residual). Damped fixed-point iteration z <- z + a (T(z) - z) on the log-probs
        until the residual is below NEWTON_FROM, then Newton on F(z) = z - T(z) (a damped step
        wherever Newton does not lower the residual) until it is below tol. F's Jacobian,
        I - (1/beta) A S with A = P - 1/2 antisymmetric and S = diag(pi) - pi pi^T, has
        eigenvalues 1 +- i w with |w| <= ||A|| / (2 beta), so the damped step a = 1 / (1 + w_max^2)
        contracts and Newton's system is never singular."""
        z = self.reference_logps.clone().double()
        A = self.preferences.double() - 0.5
        w = float(torch.linalg.matrix_norm(A, ord=2).max()) / (2 * self.beta)
        damping = 1.0 / (1.0 + w * w)
        for _ in range(max_iter):
            if self.residual(z) < NEWTON_FROM:
                break
            z = torch.log_softmax(z + damping * (self.best_response_logps(z) - z), -1)
        K = z.shape[-1]
        for _ in range(500):
            residual = self.residual(z)
            if residual < tol:
                break
            pi = z.exp()
            S = torch.diag_embed(pi) - pi[:, :, None] * pi[:, None, :]  # (P, K, K) d pi / d z
            jacobian = torch.eye(K, dtype=z.dtype) - (A @ S) / self.beta  # d(z - T(z))/dz up to a shift
            F = z - self.best_response_logps(z)
            newton = torch.log_softmax(z - torch.linalg.solve(jacobian, F[..., None])[..., 0], -1)
            if self.residual(newton) < residual:
                z = newton
            else:  # Newton overshot (far from the solution): a damped step instead
                z = torch.log_softmax(z + damping * (self.best_response_logps(z) - z), -1)
        return z, self.residual(z)

    def exploitability(self, logps: Tensor) -> float:
        """Mean over prompts of max_y P(y > pi) - 1/2: how much a best pure response beats pi
        (the unregularized duality gap; 0 only at the unregularized minimax winner)."""
        return float((self.win_rates(logps).max(-1).values - 0.5).mean())

    def tv_distance(self, logps: Tensor, target: Tensor) -> float:
        """Mean over prompts of 1/2 sum_y |pi(y|x) - pi*(y|x)|."""
        return float(0.5 * (logps.double().exp() - target.double().exp()).abs().sum(-1).mean())

    # --- sampled feedback ---------------------------------------------------------------------------
    def sample(self, logps: Tensor, n: int, g: torch.Generator) -> Tensor:
        """(P, n) responses drawn from pi(.|x), with replacement."""
        return torch.multinomial(logps.detach().double().exp(), n, replacement=True, generator=g)

    def prefer(self, first: Tensor, second: Tensor) -> Tensor:
        """(P, n) P(first > second | x) for (P, n) response indices: the preference source."""
        return self.preferences[torch.arange(first.shape[0])[:, None], first, second]

    def label(self, first: Tensor, second: Tensor, g: torch.Generator) -> Tensor:
        """(P, n) bool, True where a sampled annotator prefers `first`: Bernoulli(P(first > second))."""
        return torch.rand(first.shape, generator=g, dtype=torch.float64) < self.prefer(first, second)
