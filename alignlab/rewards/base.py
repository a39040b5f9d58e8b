"""The reward-source protocol: everything that scores responses looks the same to its consumers
(Best-of-N, online RL, evaluation).

    scores = source.score(prompts, responses)           # (N,) float tensor, no grad
    per_attribute = source.score_attributes(...)        # (N, A) when a source has A attributes

Prompts are plain text or chat message lists (as in `alignlab.data.records`); responses are text.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from alignlab.rewards.aggregate import aggregate


@runtime_checkable
class RewardSource(Protocol):
    name: str

    def score(self, prompts: Sequence, responses: Sequence[str]) -> Tensor:
        """(N,) rewards of responses[i] to prompts[i]; no grad."""
        ...


def _check_lengths(prompts: Sequence, responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"score() needs one prompt per response, got {len(prompts)} prompts and {len(responses)} responses")


class FunctionReward:
    """A plain Python function as a reward source (verifiable rewards, the lab's gold rewards).

    `fn(prompts, responses) -> sequence of floats`, or with `responses_only=True`
    `fn(responses) -> ...` (e.g. `SentimentTask.gold_reward`)."""

    def __init__(self, fn: Callable, name: str = "function", responses_only: bool = False):
        self.fn, self.name, self.responses_only = fn, name, responses_only

    @torch.no_grad()
    def score(self, prompts: Sequence, responses: Sequence[str]) -> Tensor:
        _check_lengths(prompts, responses)
        out = self.fn(list(responses)) if self.responses_only else self.fn(list(prompts), list(responses))
        out = torch.as_tensor(out, dtype=torch.float32).reshape(-1)
        if out.numel() != len(responses):
            raise ValueError(f"reward function {self.name!r} returned {out.numel()} scores for {len(responses)} responses")
        return out


class EnsembleReward:
    """K reward sources aggregated per response by mean, worst-case (WCO) or uncertainty-weighted
    (UWO) optimization (alignlab.rewards.aggregate)."""

    def __init__(self, members: Sequence[RewardSource], how: str = "mean", uwo_coef: float = 0.5,
                 name: str = "ensemble"):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        aggregate(torch.zeros(1, 1), how)  # validates `how` now rather than at the first score()
        self.members, self.how, self.uwo_coef, self.name = list(members), how, uwo_coef, name

    @torch.no_grad()
    def member_scores(self, prompts: Sequence, responses: Sequence[str]) -> Tensor:
        """(K, N) scores of every member."""
        return torch.stack([m.score(prompts, responses) for m in self.members])

    def score(self, prompts: Sequence, responses: Sequence[str]) -> Tensor:
        return aggregate(self.member_scores(prompts, responses), self.how, uwo_coef=self.uwo_coef)
