"""Reward sources named by a short string, as configs and the CLI give them:

    math                     1 if the response's final answer, written out as a number, equals the
                             prompt's `answer` (math-verify); math:lenient accepts any equal expression
    rm:DIR                   a trained reward model (ensembles aggregated by `how`: mean | wco | uwo)
    rm:DIR1+DIR2+...         separately trained models (e.g. seeds) as one ensemble, aggregated by `how`
    rm:DIR@helpful=0.8,safe=0.2   a multi-objective model read along a direction over its
                             attributes (DPA; numbers in attribute order work too) instead of its gate
    python:module:function   fn(prompts, responses) -> floats
    PREFIX:NAME              a registered reward family (`register_reward_family`): importing
                             alignlab.lab registers `lab:<task>`, any lab task's gold reward
                             (lab:sentiment, lab:arithmetic, lab:length, ...)

`WeightedRewards` sums several sources with weights and keeps each source's scores for logging.
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

import torch
from torch import Tensor

from alignlab.rewards.base import FunctionReward, RewardSource
from alignlab.rewards.model import load_reward_source
from alignlab.rewards.verifiable import AnswerReward

# (NAME after "PREFIX:", answers: prompt text -> reference answer) -> the reward source
RewardFamily = Callable[[str, dict], RewardSource]
BUILT_IN = ("math", "rm", "python")
REWARD_FAMILIES: dict[str, RewardFamily] = {}


def register_reward_family(prefix: str, factory: RewardFamily) -> None:
    """Resolve `PREFIX:NAME` reward specs to `factory(NAME, answers)`. The package that provides
    the rewards registers them when it is imported (alignlab.lab registers `lab`), so that this
    module needs no import of it. A built-in prefix, or a prefix already registered to another
    factory, is an error: nothing is silently replaced."""
    if prefix in BUILT_IN:
        raise ValueError(f"reward prefix {prefix!r} is built in; choose another")
    if REWARD_FAMILIES.get(prefix, factory) is not factory:
        raise ValueError(f"reward prefix {prefix!r} is already registered to {REWARD_FAMILIES[prefix]!r}")
    REWARD_FAMILIES[prefix] = factory


def build_reward_source(spec: str, *, how: str = "mean", answers: dict | None = None) -> RewardSource:
    """One reward source from its spec string; `answers` maps prompt text -> reference answer
    (for `math` and verifiable lab tasks)."""
    kind, _, rest = spec.partition(":")
    if kind in REWARD_FAMILIES:
        return REWARD_FAMILIES[kind](rest, answers or {})
    if kind == "math":
        if not answers:
            raise ValueError("reward 'math' needs prompts with an `answer` field (the reference answer)")
        if rest not in ("", "lenient"):
            raise ValueError(f"reward {spec!r}: use math or math:lenient")
        return AnswerReward(answers, literal=rest != "lenient")
    if kind == "rm":
        path, at, direction = rest.rpartition("@") if "@" in rest else (rest, "", "")
        if not path:
            raise ValueError("reward 'rm:DIR' needs the reward model's folder after 'rm:'")
        return load_reward_source(path, how=how, direction=direction if at else None)
    if kind == "python":
        module, _, name = rest.rpartition(":")
        if not module or not name:
            raise ValueError(f"reward {spec!r}: write python:package.module:function")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"reward {spec!r}: cannot import {name} from {module} ({exc})") from None
        return FunctionReward(fn, name=name)
    families = "".join(f"{prefix}:NAME, " for prefix in REWARD_FAMILIES)
    raise ValueError(f"unknown reward source {spec!r}; use {families}math, rm:DIR or python:module:function"
                     + ("" if "lab" in REWARD_FAMILIES else " (lab:TASK once alignlab.lab is imported)"))


class WeightedRewards:
    """sum_i w_i * source_i(prompts, responses); `last_parts` keeps each source's (N,) scores."""

    def __init__(self, sources: Sequence[RewardSource], weights: Sequence[float] | None = None,
                 names: Sequence[str] | None = None):
        if not sources:
            raise ValueError("at least one reward source is needed")
        self.sources = list(sources)
        self.weights = [float(w) for w in weights] if weights else [1.0] * len(self.sources)
        self.names = list(names) if names else [getattr(s, "name", f"reward{i}") for i, s in enumerate(self.sources)]
        self.name = "+".join(self.names)
        self.last_parts: dict[str, Tensor] = {}

    @torch.no_grad()
    def score(self, prompts: Sequence, responses: Sequence[str]) -> Tensor:
        total = torch.zeros(len(responses))
        self.last_parts = {}
        for name, w, source in zip(self.names, self.weights, self.sources):
            part = source.score(prompts, responses).float().reshape(-1)
            self.last_parts[name] = part
            total += w * part
        return total


def build_rewards(specs: Sequence[str], weights: Sequence[float] | None = None, *, how: str = "mean",
                  answers: dict | None = None) -> WeightedRewards:
    return WeightedRewards([build_reward_source(s, how=how, answers=answers) for s in specs], weights, list(specs))
