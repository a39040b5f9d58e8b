"""A lab task with a verifiable gold reward: short arithmetic word problems with integer answers.

"Tom has 7 apples and buys 5 more. How many apples does Tom have now? Answer with just the
number." The gold reward is 1 when math-verify finds the right number as the response's final
answer, else 0 (`alignlab.rewards.verifiable`) — the GSM8K-style outcome reward of RL with
verifiable rewards (Cobbe et al. 2021, arXiv:2110.14168; Tülu 3, arXiv:2411.15124 §4), shrunk to
what a 135M-parameter chat model can partly solve: operands are at most 20 (products at most 9 x 10),
so that a base policy gets some problems right and RL has something to reinforce (the embedded
SmolLM2-135M-Instruct's base rates: docs/results/online-rl.md). It rarely answers with just the
number: it restates the problem, works it out and runs on, and the last number it writes is then
taken as its answer.

The problem space is enumerated, not sampled: every (template, operands) pair is one problem, its
wording (name, item) fixed by that pair alone, so the same problem text always has the same answer
whatever the seed. The seed decides which problems are held out (a hash of seed, template and
operands: about 20% go to "eval", so train and eval never share a problem, even with different
names) and the order in which each split is served.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cached_property
from itertools import product
from typing import Callable, Iterable, Sequence

import torch

from alignlab.data.prompts import take_rows
from alignlab.data.records import Prompt
from alignlab.rewards.verifiable import AnswerReward, answers_of

NAMES = ("Tom", "Anna", "Ben", "Maria", "Sam", "Lily", "Omar", "Mia", "Leo", "Sara", "Ravi", "Emma")
ITEMS = ("apples", "marbles", "stickers", "pencils", "cookies", "books", "stamps", "shells", "cards",
         "oranges")
INSTRUCTION = "Answer with just the number."
EVAL_PERCENT = 20


@dataclass(frozen=True)
class Template:
    """One kind of problem: its wording, the expression it asks for, its answer as a function of
    the operands, and all its operand tuples."""

    text: str
    expression: str
    answer: Callable[..., int]
    operands: Callable[[], Iterable[tuple[int, ...]]]


TEMPLATES: dict[str, Template] = {
    "add": Template(
        "{name} has {a} {items} and buys {b} more. How many {items} does {name} have now?",
        "{a} + {b}", lambda a, b: a + b, lambda: product(range(2, 21), range(2, 21))),
    "subtract": Template(
        "{name} has {a} {items} and gives {b} of them to a friend. How many {items} does {name} have left?",
        "{a} - {b}", lambda a, b: a - b, lambda: ((a, b) for a in range(5, 21) for b in range(2, a))),
    "multiply": Template(
        "{name} buys {a} bags with {b} {items} in each bag. How many {items} does {name} buy in total?",
        "{a} * {b}", lambda a, b: a * b, lambda: product(range(2, 10), range(2, 11))),
    "two_step": Template(
        "{name} has {a} {items}, buys {b} more and then gives {c} away. How many {items} does {name} have now?",
        "{a} + {b} - {c}", lambda a, b, c: a + b - c,
        lambda: ((a, b, c) for a in range(2, 21) for b in range(2, 11) for c in range(2, a + 1))),
}


def _in_eval(seed: int, kind: str, values: tuple[int, ...]) -> bool:
    digest = hashlib.blake2b(f"{seed}:{kind}:{values}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 100 < EVAL_PERCENT


def make_problem(kind: str, values: tuple[int, ...]) -> dict:
    """The row of one problem: `prompt` (one user turn), `answer` (decimal text), `expression`."""
    template = TEMPLATES[kind]
    # The wording depends on the problem alone, so a problem's text and answer never vary by seed.
    wording = random.Random(f"{kind}:{values}")
    fields = dict(zip("abc", values), name=wording.choice(NAMES), items=wording.choice(ITEMS))
    content = f"{template.text.format(**fields)} {INSTRUCTION}"
    return {"prompt": [{"role": "user", "content": content}], "answer": str(template.answer(*values)),
            "expression": template.expression.format(**fields)}


class ArithmeticTask:
    """Arithmetic word problems; gold reward 1 for the right final answer, else 0."""

    name = "arithmetic"
    needs_answers = True

    def __init__(self, seed: int = 0):
        self.seed = seed

    @cached_property
    def _splits(self) -> dict[str, list[dict]]:
        """Each split's rows in serving order: every template shuffled on its own (seeded), then
        interleaved round-robin, so that any prefix mixes the templates evenly."""
        per_kind = {"train": [], "eval": []}
        for kind, template in TEMPLATES.items():
            rows = {"train": [], "eval": []}
            for values in template.operands():
                rows["eval" if _in_eval(self.seed, kind, values) else "train"].append(make_problem(kind, values))
            for split, kind_rows in rows.items():
                random.Random(f"{self.seed}:{split}:{kind}").shuffle(kind_rows)
                per_kind[split].append(kind_rows)
        return {split: _round_robin(lists) for split, lists in per_kind.items()}

    def prompt_rows(self, split: str, n: int | None = None) -> list[dict]:
        """The first n problems of `split` ("train" or "eval"): dicts with `prompt` (a chat message
        list), `answer` (the integer as text) and `expression` (e.g. "7 + 5")."""
        return take_rows(self._splits, split, n, self.name)

    def answers(self, rows: Sequence[dict]) -> dict[str, str]:
        return answers_of(rows)

    @cached_property
    def _all_answers(self) -> dict[str, str]:
        return answers_of(self._splits["train"] + self._splits["eval"])

    def reward_source(self, answers: dict[str, str] | None = None) -> AnswerReward:
        """Exact-answer reward. The task knows the answer of every problem it can pose, so
        `answers` is only needed for prompts from elsewhere (it wins where both have a key)."""
        return AnswerReward({**self._all_answers, **(answers or {})}, name=self.name)

    def gold_reward(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> torch.Tensor:
        """(N,) 1.0 where the final answer of responses[i] is the answer to prompts[i], else 0.0."""
        return self.reward_source().score(prompts, responses)


def _round_robin(lists: list[list]) -> list:
    out, depth = [], max((len(x) for x in lists), default=0)
    for i in range(depth):
        out.extend(x[i] for x in lists if i < len(x))
    return out
