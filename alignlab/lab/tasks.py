"""The lab's language tasks, by name, for the trainers: each has fixed, disjoint train/eval prompt
splits and a gold reward source.

    task = get_task("arithmetic", seed=0)
    rows = task.prompt_rows("train", 256)              # [{"prompt": [...], "answer": "12", ...}]
    reward = task.reward_source(task.answers(rows))    # a RewardSource (alignlab.rewards.base)

`build_reward_source("lab:<name>", answers=...)` (alignlab.rewards.spec) is the same
`get_task(name).reward_source(answers)`: importing alignlab.lab registers `lab_reward_source` as
the `lab` reward family. A task declares `needs_answers`: whether its reward reads
reference answers (`answers(rows)`, keyed by `alignlab.rewards.verifiable.answer_key`).

    sentiment    "Write one sentence about <topic>."; VADER compound sentiment (lab/sentiment.py)
    arithmetic   small word problems; 1 for the right final answer (lab/arithmetic.py, math-verify)
    length       "Describe <topic> in one sentence."; one line of 12 words (lab/length.py)
"""

from __future__ import annotations

from functools import cached_property
from typing import Callable, Protocol, Sequence

from alignlab.data.prompts import take_rows
from alignlab.lab.arithmetic import ArithmeticTask
from alignlab.lab.length import LengthTask
from alignlab.lab.sentiment import SentimentTask
from alignlab.rewards.base import FunctionReward, RewardSource
from alignlab.rewards.verifiable import answers_of

SENTIMENT_EVAL_FRACTION = 0.2


class LabTask(Protocol):
    name: str
    needs_answers: bool

    def prompt_rows(self, split: str, n: int | None = None) -> list[dict]: ...

    def answers(self, rows: Sequence[dict]) -> dict[str, str]: ...

    def reward_source(self, answers: dict[str, str] | None = None) -> RewardSource: ...


class SentimentLabTask:
    """`SentimentTask` as a lab task: its seeded `split()` with the last 20% of topics held out."""

    name = "sentiment"
    needs_answers = False

    def __init__(self, seed: int = 0):
        self.task, self.seed = SentimentTask(), seed

    @cached_property
    def _splits(self) -> dict[str, list[dict]]:
        n_eval = round(len(self.task) * SENTIMENT_EVAL_FRACTION)
        train, held_out = self.task.split(len(self.task) - n_eval, n_eval, seed=self.seed)
        return {"train": [{"prompt": p} for p in train], "eval": [{"prompt": p} for p in held_out]}

    def prompt_rows(self, split: str, n: int | None = None) -> list[dict]:
        return take_rows(self._splits, split, n, self.name)

    def answers(self, rows: Sequence[dict]) -> dict[str, str]:
        return answers_of(rows)

    def reward_source(self, answers: dict[str, str] | None = None) -> FunctionReward:
        return FunctionReward(self.task.gold_reward, responses_only=True, name=self.name)


LAB_TASKS: dict[str, Callable[[int], LabTask]] = {
    "sentiment": SentimentLabTask,
    "arithmetic": ArithmeticTask,
    "length": lambda seed: LengthTask(seed=seed),
}


def get_task(name: str, seed: int = 0) -> LabTask:
    """The lab task called `name`, its splits drawn with `seed`."""
    if name not in LAB_TASKS:
        raise ValueError(f"unknown lab task {name!r}; the lab tasks are: {', '.join(LAB_TASKS)}")
    return LAB_TASKS[name](seed)


def lab_reward_source(name: str, answers: dict[str, str]) -> RewardSource:
    """The `lab:<name>` reward (alignlab.rewards.spec): the gold reward of the lab task `name`."""
    try:
        task = get_task(name)
    except ValueError as exc:
        raise ValueError(f"reward 'lab:{name}': {exc}") from None
    return task.reward_source(answers)
