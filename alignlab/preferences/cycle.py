"""An intransitive judge for the lab: three kinds of response that beat each other in a cycle,
like rock-paper-scissors, so that no reward (no Bradley-Terry score) can represent it.

A response's kind is its length in words (whitespace-separated):

- "short": at most `short_words`;
- "medium": more, up to `long_words`;
- "long": more than `long_words`.

short ≻ medium ≻ long ≻ short, each with probability 1/2 + `margin`; two responses of one kind tie
at 1/2. P(a ≻ b) + P(b ≻ a) = 1 exactly. Length is what a small chat model's samples vary on most
and what a policy learns to change fastest (when to end), so all three kinds are reachable. The
τ-regularized Nash equilibrium of this game mixes the kinds; a policy fitted to a Bradley-Terry
reward of these preferences commits to one kind and loses to the next one round the cycle.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor

from alignlab.preferences.base import check_lengths

KINDS = ("short", "medium", "long")
BEATS = {0: 1, 1: 2, 2: 0}  # short beats medium, medium beats long, long beats short


def response_kind(text: str, short_words: int = 20, long_words: int = 28) -> int:
    """0 short, 1 medium, 2 long (see the module docstring)."""
    words = len(re.findall(r"\S+", text))
    return 0 if words <= short_words else (1 if words <= long_words else 2)


def cycle_probability(kind_a: int, kind_b: int, margin: float) -> float:
    """P(a ≻ b) for kinds a and b: 1/2 + margin if a's kind beats b's, its complement if b's beats
    a's, 1/2 for one kind."""
    if kind_a == kind_b:
        return 0.5
    win = 0.5 + margin
    return win if BEATS[kind_a] == kind_b else 1.0 - win


def _outcome(kind_a: int, kind_b: int) -> int:
    return 0 if kind_a == kind_b else (1 if BEATS[kind_a] == kind_b else -1)


class CyclePreference:
    """The cycle judge as a preference source (`cycle:` spec, e.g. `cycle:short=20,long=28,margin=0.4`)."""

    def __init__(self, short_words: int = 20, long_words: int = 28, margin: float = 0.4, name: str | None = None):
        if not 0 < margin <= 0.5:
            raise ValueError(f"the cycle judge's margin must be in (0, 0.5], got {margin}")
        if not 1 <= short_words < long_words:
            raise ValueError(f"the cycle judge needs 1 <= short < long words, got {short_words} and {long_words}")
        self.short_words, self.long_words, self.margin = short_words, long_words, float(margin)
        self.name = name or f"cycle:short={short_words},long={long_words},margin={margin:g}"

    def kind(self, text: str) -> int:
        return response_kind(text, self.short_words, self.long_words)

    @torch.no_grad()
    def prefer(self, prompts: Sequence, a: Sequence[str], b: Sequence[str]) -> Tensor:
        check_lengths(prompts, a, b)
        # outcome +1 (a's kind wins), -1 (b's), 0 (one kind); the loser's probability is formed as
        # 1 - (the winner's) in float32, so P(a > b) + P(b > a) = 1 bit for bit
        outcome = torch.tensor([_outcome(self.kind(x), self.kind(y)) for x, y in zip(a, b)])
        high = torch.full((len(outcome),), 0.5 + self.margin, dtype=torch.float32)
        return torch.where(outcome > 0, high, torch.where(outcome < 0, 1.0 - high, torch.full_like(high, 0.5)))


def parse_cycle_spec(rest: str) -> CyclePreference:
    """`cycle:` options after the colon: `short=N,long=N,margin=M` (each optional)."""
    options = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key not in ("short", "long", "margin"):
            raise ValueError(f"preference source 'cycle:{rest}': options are short=N, long=N and margin=M, e.g. "
                             "cycle:short=20,long=28,margin=0.4")
        try:
            options[key] = float(value) if key == "margin" else int(value)
        except ValueError:
            raise ValueError(f"preference source 'cycle:{rest}': {key} must be a number, got {value!r}") from None
    return CyclePreference(short_words=options.get("short", 20), long_words=options.get("long", 28),
                           margin=options.get("margin", 0.4))
