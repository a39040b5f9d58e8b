"""Tabular bandits: a known KL-regularized optimum to check online and offline algorithms against.

P prompts x K candidate responses, a reference policy pi_ref(y|x) and a known reward r(x, y).
The maximizer of E_pi[r] - beta * KL(pi || pi_ref) is, in closed form,

    pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x)

A tabular softmax policy (one logit per prompt and response, plus a tabular critic V(x) for PPO)
is trained by the *same* advantage estimators (`alignlab.losses.advantages.compute_advantages`)
and losses (`clipped_surrogate`, `kl_loss`, `clipped_value_loss`, `p3o_loss`, the `dpo` loss of
the loss table) that the language-model trainers use, each response being a one-token sequence
(mask (B, 1)). `train_bandit` reports the total-variation distance to pi* along training.

Which configurations have pi* as their fixed point: every estimator with the KL as a per-token
reward penalty (k1, `kl_mode="reward"`), and the unscaled ones with the KL as a k2 loss term
(its on-policy gradient is exactly grad KL(pi || pi_ref)). GRPO's k3 loss term (`kl_mode="loss"`,
`kl_estimator="k3"`) has the gradient of the *forward* KL(pi_ref || pi) on on-policy samples
(E_pi[grad k3] = pi - pi_ref in logit space), and std-scaled group advantages reweight the reward
per prompt, so that combination converges elsewhere (tests/test_lab_bandit.py measures how far).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from alignlab.losses import get_loss
from alignlab.losses.advantages import ESTIMATORS, compute_advantages
from alignlab.losses.online_preference import choose_pairs, round_robin_probabilities, soft_preference_loss
from alignlab.losses.policy import clipped_surrogate, clipped_value_loss, kl_estimate, kl_loss, p3o_loss

# algorithm -> advantage estimator (None: its own loss)
BANDIT_ALGORITHMS = {"ppo": "gae", "grpo": "grpo", "rloo": "rloo", "reinforce_pp": "reinforce_pp",
                     "remax": "remax", "p3o": None, "dpo": None, "online_dpo": None}


@dataclass
class Bandit:
    reference_logps: Tensor
    """(P, K) log pi_ref(y|x)."""
    rewards: Tensor
    """(P, K) r(x, y)."""
    beta: float
    """KL strength of the objective E[r] - beta KL(pi || pi_ref)."""

    @classmethod
    def random(cls, prompts: int = 4, arms: int = 5, *, beta: float = 0.5, seed: int = 0) -> "Bandit":
        g = torch.Generator().manual_seed(seed)
        reference = torch.log_softmax(torch.randn(prompts, arms, generator=g), -1)
        return cls(reference, torch.randn(prompts, arms, generator=g), beta)

    def optimal_logps(self) -> Tensor:
        """log pi*(y|x) = log softmax(log pi_ref + r / beta), (P, K)."""
        return torch.log_softmax(self.reference_logps + self.rewards / self.beta, -1)

    def tv_distance(self, logps: Tensor, target: Tensor | None = None) -> float:
        """Mean over prompts of 1/2 sum_y |pi(y|x) - pi*(y|x)|."""
        target = self.optimal_logps() if target is None else target
        return float(0.5 * (logps.exp() - target.exp()).abs().sum(-1).mean())

    def objective(self, logps: Tensor) -> float:
        """E_pi[r] - beta KL(pi || pi_ref), averaged over prompts."""
        p = logps.exp()
        return float(((p * self.rewards).sum(-1) - self.beta * (p * (logps - self.reference_logps)).sum(-1)).mean())


class TabularPolicy(nn.Module):
    def __init__(self, bandit: Bandit):
        super().__init__()
        self.logits = nn.Parameter(bandit.reference_logps.clone())  # starts at pi_ref
        self.values = nn.Parameter(torch.zeros(bandit.rewards.shape[0]))  # V(x), PPO's critic

    def logps(self) -> Tensor:
        return torch.log_softmax(self.logits, -1)  # (P, K)


@dataclass
class BanditConfig:
    algorithm: str = "grpo"
    steps: int = 300
    n: int = 16
    """Samples per prompt per step (pairs per prompt for dpo; p3o uses pairs of 2 from these)."""
    learning_rate: float = 0.1
    kl_mode: str = "reward"
    """"reward": k1 per-token reward penalty; "loss": kl_coef * kl_loss(kl_estimator) added to the loss."""
    kl_estimator: str = "k2"
    ppo_epochs: int = 1
    clip: float = 0.2
    scale: bool = True
    """GRPO: divide by the group std."""
    seed: int = 0
    history_every: int = 10
    extra: dict = field(default_factory=dict)


def _sample(logps: Tensor, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """n actions per prompt, prompt-major (row i: prompt i // n). Returns (prompt index, action)."""
    P = logps.shape[0]
    actions = torch.multinomial(logps.detach().exp(), n, replacement=True, generator=g)  # (P, n)
    return torch.arange(P).repeat_interleave(n), actions.reshape(-1)


def _online_step(bandit: Bandit, policy: TabularPolicy, cfg: BanditConfig, opt, g: torch.Generator) -> None:
    prompts, actions = _sample(policy.logps(), cfg.n, g)
    ref = bandit.reference_logps[prompts, actions][:, None]  # (B, 1)
    old = policy.logps()[prompts, actions].detach()[:, None]  # (B, 1): the sampling log-probs
    mask = torch.ones_like(old)
    rewards = bandit.rewards[prompts, actions]  # (B,)
    kl = kl_estimate(old, ref, "k1")  # (B, 1) per-token k1, the reward penalty
    kl_coef = bandit.beta if cfg.kl_mode == "reward" else 0.0
    if cfg.algorithm == "p3o":
        shaped = rewards - kl_coef * kl[:, 0]
        for _ in range(cfg.ppo_epochs):
            new = policy.logps()[prompts, actions]
            loss, _ = p3o_loss(new[0::2], new[1::2], old[0::2, 0], old[1::2, 0], shaped[0::2], shaped[1::2], clip=cfg.clip)
            _step(opt, loss + _kl_term(bandit, cfg, new[:, None], ref, mask))
        return
    estimator = BANDIT_ALGORITHMS[cfg.algorithm]
    greedy = None
    if ESTIMATORS[estimator].needs_greedy:
        greedy = bandit.rewards[torch.arange(bandit.rewards.shape[0]), policy.logps().argmax(-1)]
    values = policy.values[prompts].detach()[:, None] if ESTIMATORS[estimator].needs_values else None
    advantages, returns = compute_advantages(estimator, rewards, mask, n=cfg.n, kl=kl, kl_coef=kl_coef, values=values,
                                             greedy_rewards=greedy, gamma=1.0, lam=1.0, scale=cfg.scale)
    for _ in range(cfg.ppo_epochs):
        new = policy.logps()[prompts, actions][:, None]
        loss, _ = clipped_surrogate(new, old, advantages, mask, clip_low=cfg.clip)
        loss = loss + _kl_term(bandit, cfg, new, ref, mask)
        if returns is not None:
            loss = loss + clipped_value_loss(policy.values[prompts][:, None], values, returns, mask, clip=None)[0]
        _step(opt, loss)


def _kl_term(bandit: Bandit, cfg: BanditConfig, new: Tensor, ref: Tensor, mask: Tensor) -> Tensor:
    if cfg.kl_mode != "loss":
        return new.new_zeros(())
    return bandit.beta * kl_loss(new, ref, mask, kind=cfg.kl_estimator)


def _dpo_step(bandit: Bandit, policy: TabularPolicy, cfg: BanditConfig, opt, g: torch.Generator) -> None:
    """Pairs sampled from pi_ref, labelled by a Bradley-Terry annotator on r; the `dpo` loss."""
    prompts, first = _sample(bandit.reference_logps, cfg.n, g)
    _, second = _sample(bandit.reference_logps, cfg.n, g)
    p_first = torch.sigmoid(bandit.rewards[prompts, first] - bandit.rewards[prompts, second])
    first_wins = torch.rand(p_first.shape, generator=g) < p_first
    chosen, rejected = torch.where(first_wins, first, second), torch.where(first_wins, second, first)
    logps = policy.logps()
    loss, _ = get_loss("dpo")(logps[prompts, chosen], logps[prompts, rejected], bandit.reference_logps[prompts, chosen],
                              bandit.reference_logps[prompts, rejected], beta=bandit.beta)
    _step(opt, loss)


def _online_dpo_step(bandit: Bandit, policy: TabularPolicy, cfg: BanditConfig, opt, g: torch.Generator) -> None:
    """Online DPO: n pairs a prompt sampled from the *current* policy, judged by Bradley-Terry on
    r (P(a ≻ b) = σ(r(a) − r(b))), the trainer's own pair choice and `soft_preference_loss` over
    the `dpo` loss with the fixed reference. `cfg.extra["labels"]`: "sampled" (an annotator's
    Bernoulli label, default), "soft" (the probability itself, OSP) or "hard" (the more
    probable side always wins, as ranking by a reward does): the first two have pi* as their
    population optimum, "hard" does not (its labels are not Bradley-Terry)."""
    labels = cfg.extra.get("labels", "sampled")
    prompts, actions = _sample(policy.logps(), 2 * cfg.n, g)  # groups of 2: (P * n, 2)
    prompts, actions = prompts[0::2], actions.reshape(-1, 2)
    r = bandit.rewards[prompts[:, None], actions]  # (G, 2)
    probabilities = round_robin_probabilities(lambda a, b: torch.sigmoid(r.reshape(-1)[a] - r.reshape(-1)[b]), 2,
                                              len(prompts))
    pair = choose_pairs(probabilities, "best_worst", g)  # a group of 2 is its own pair, best first
    first, second = actions.gather(1, pair[:, :1])[:, 0], actions.gather(1, pair[:, 1:])[:, 0]
    p = probabilities[torch.arange(len(prompts)), pair[:, 0], pair[:, 1]]
    target = {"soft": p, "hard": (p > 0.5).float(),
              "sampled": (torch.rand(p.shape, generator=g) < p).float()}[labels]
    logps = policy.logps()
    loss, _ = soft_preference_loss(get_loss("dpo"), logps[prompts, first], logps[prompts, second],
                                   bandit.reference_logps[prompts, first], bandit.reference_logps[prompts, second],
                                   target, beta=bandit.beta)
    _step(opt, loss.mean())


def _step(opt, loss: Tensor) -> None:
    opt.zero_grad()
    loss.backward()
    opt.step()


def train_bandit(bandit: Bandit, cfg: BanditConfig) -> dict:
    """Train a tabular policy with `cfg.algorithm`; returns the TV distance to pi* along the way
    (`history`: [(step, tv, objective)]) and at the end (`tv`), and the final log-probs."""
    if cfg.algorithm not in BANDIT_ALGORITHMS:
        raise ValueError(f"unknown bandit algorithm {cfg.algorithm!r}; valid: {', '.join(BANDIT_ALGORITHMS)}")
    if cfg.algorithm == "p3o" and cfg.n % 2:
        raise ValueError("p3o pairs consecutive samples: n must be even")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    policy = TabularPolicy(bandit)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / cfg.steps)  # decay to 0: a settled last iterate
    step_fn = {"dpo": _dpo_step, "online_dpo": _online_dpo_step}.get(cfg.algorithm, _online_step)
    history = [(0, bandit.tv_distance(policy.logps().detach()), bandit.objective(policy.logps().detach()))]
    for step in range(1, cfg.steps + 1):
        step_fn(bandit, policy, cfg, opt, g)
        sched.step()
        if step % cfg.history_every == 0 or step == cfg.steps:
            logps = policy.logps().detach()
            history.append((step, bandit.tv_distance(logps), bandit.objective(logps)))
    logps = policy.logps().detach()
    return {"algorithm": cfg.algorithm, "tv": bandit.tv_distance(logps), "tv_start": history[0][1],
            "objective": bandit.objective(logps), "optimal_objective": bandit.objective(bandit.optimal_logps()),
            "history": history, "logps": logps}
