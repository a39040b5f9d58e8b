"""The preference-source protocol:

    p = source.prefer(prompts, a, b)      # (N,) float tensor, P(a_i ≻ b_i | prompts_i), no grad

Prompts are plain text or chat message lists (as in `alignlab.data.records`); a and b are response
texts. A source returns a probability in [0, 1] for each comparison: a soft judgement (a reward
model through Bradley-Terry, a pairwise preference model, an LLM judge) or a hard label, 0.0 or
1.0 (a simulated annotator, a person). Ties are 0.5. Consumers that need a hard label threshold at
0.5 and count the exact ties; consumers that can use soft targets (OSP) take p as it is.

`check_probabilities` is the one check every consumer applies to what a source returned: a NaN or
a value outside [0, 1] is an error naming the source, never a silently wrong label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from alignlab.rewards.base import RewardSource


@runtime_checkable
class PreferenceSource(Protocol):
    name: str

    def prefer(self, prompts: Sequence, a: Sequence[str], b: Sequence[str]) -> Tensor:
        """(N,) P(a_i ≻ b_i) in [0, 1]; no grad."""
        ...


def check_lengths(prompts: Sequence, a: Sequence[str], b: Sequence[str]) -> int:
    if not len(prompts) == len(a) == len(b):
        raise ValueError(f"prefer() needs one prompt per pair, got {len(prompts)} prompts, {len(a)} responses a "
                         f"and {len(b)} responses b")
    return len(a)


def check_probabilities(p, n: int, name: str) -> Tensor:
    """`p` as an (n,) float32 tensor of probabilities, or a ValueError naming the source when it
    has the wrong size, a NaN or a value outside [0, 1]."""
    p = torch.as_tensor(p, dtype=torch.float32).reshape(-1)
    if p.numel() != n:
        raise ValueError(f"preference source {name!r} returned {p.numel()} probabilities for {n} pairs")
    bad = ~((p >= 0) & (p <= 1))  # NaN compares false both ways
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"preference source {name!r} returned {p[i].item()} for pair {i} "
                         f"({int(bad.sum())} of {n} not a probability in [0, 1])")
    return p


def both_orders(judge: Callable[[Sequence, Sequence[str], Sequence[str]], Tensor],
                prompts: Sequence, a: Sequence[str], b: Sequence[str]) -> Tensor:
    """Order-averaged judgement: P(a ≻ b) = ½ [q(a, b) + 1 − q(b, a)], where q(x, y) is the
    judge's probability that the response shown first, x, is better. Position bias (a judge that
    favours whichever answer it sees first) cancels, and the result satisfies
    P(a ≻ b) + P(b ≻ a) = 1 exactly, also in floating point: with d = ½ [q(a, b) − q(b, a)]
    (d(b, a) = −d(a, b) exactly), P = ½ + |d| when d ≥ 0, else 1 − (½ + |d|), and 1 − h is exact
    for h in [½, 1] (Sterbenz), so the two orders sum to 1 bit for bit."""
    d = 0.5 * (torch.as_tensor(judge(prompts, a, b)) - torch.as_tensor(judge(prompts, b, a)))
    high = 0.5 + d.abs()
    return torch.where(d >= 0, high, 1.0 - high)


class RewardPreference:
    """A reward source as a preference source through Bradley-Terry:
    P(a ≻ b) = σ((r(a) − r(b)) / τ), τ = `temperature` in units of the reward."""

    def __init__(self, reward: RewardSource, temperature: float = 1.0, name: str | None = None):
        if not temperature > 0:
            raise ValueError(f"the Bradley-Terry temperature must be > 0, got {temperature}")
        self.reward, self.temperature = reward, float(temperature)
        self.name = name or getattr(reward, "name", "reward")

    @torch.no_grad()
    def prefer(self, prompts: Sequence, a: Sequence[str], b: Sequence[str]) -> Tensor:
        n = check_lengths(prompts, a, b)
        if n == 0:
            return torch.zeros(0)
        scores = self.reward.score(list(prompts) * 2, list(a) + list(b)).float().reshape(-1)
        if scores.numel() != 2 * n or not torch.isfinite(scores).all():
            raise ValueError(f"reward source {self.name!r} returned {scores.numel()} scores for {2 * n} "
                             "responses, or a score that is not finite")
        return check_probabilities(torch.sigmoid((scores[:n] - scores[n:]) / self.temperature), n, self.name)


class AnnotatorPreference:
    """A simulated annotator: hard labels 1.0 (a ≻ b) or 0.0 sampled from Bradley-Terry on a gold
    reward, P(label = 1) = (1 − ε) σ((r(a) − r(b)) / τ) + ε (1 − σ(...)), with its own seeded
    generator (the global RNG is untouched). `last_prob_first` keeps σ(...) of the last call, for
    agreement reports."""

    def __init__(self, gold: RewardSource, temperature: float = 1.0, flip_prob: float = 0.0, seed: int = 0,
                 name: str | None = None):
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"the annotator's flip probability must be in [0, 1], got {flip_prob}")
        self.soft = RewardPreference(gold, temperature)
        self.flip_prob = float(flip_prob)
        self.generator = torch.Generator().manual_seed(seed)
        self.name = name or f"annotator:{self.soft.name}"
        self.last_prob_first = torch.zeros(0)

    @torch.no_grad()
    def prefer(self, prompts: Sequence, a: Sequence[str], b: Sequence[str]) -> Tensor:
        p = self.soft.prefer(prompts, a, b)
        choice = torch.rand(p.shape, generator=self.generator) < p
        flip = torch.rand(p.shape, generator=self.generator) < self.flip_prob
        self.last_prob_first = p
        return (choice ^ flip).float()
