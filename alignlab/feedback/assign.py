"""Which item an annotator judges next: one strategy per project, from one table (`STRATEGIES`).

An item is open to an annotator who has not been shown it while fewer than `overlap` annotators
have been. Among open items, the ones shown to the fewest annotators come first (so overlap is
filled evenly), then the strategy picks:

- uniform: uniformly at random.
- uncertainty: the item a reward-model ensemble disagrees on most: the members' reward gaps
  g_k = r_k(first) - r_k(second) are split by sign; disagreement = min(share > 0, share <= 0),
  ties broken by the spread (std) of the gaps. Items without member scores count as most uncertain.
- thompson: the randomized active query of Wu & Sun (2023, "Making RL with Preference-based
  Feedback Efficient via Randomization", arXiv:2310.14554) with the ensemble as the posterior
  sample: draw two members at random for every open item; query an item where the two samples
  disagree on which response is better, else (the samples agree everywhere) any open item.
  For items of more than two responses the first two responses' gap is used.
"""

from __future__ import annotations

import random
import statistics
from typing import Callable, Sequence


def gaps(member_scores: list[list[float]] | None) -> list[float] | None:
    """(K,) reward gaps of the first two responses from (K, n) member scores."""
    if not member_scores or len(member_scores[0]) < 2:
        return None
    return [row[0] - row[1] for row in member_scores]


def disagreement(member_scores) -> tuple[float, float]:
    g = gaps(member_scores)
    if g is None:
        return (0.5, float("inf"))
    up = sum(x > 0 for x in g) / len(g)
    return (min(up, 1 - up), statistics.pstdev(g))


def pick_uniform(items: Sequence, rng: random.Random):
    return rng.choice(items)


def pick_uncertainty(items: Sequence, rng: random.Random):
    best = max(disagreement(item.member_scores) for item in items)
    return rng.choice([item for item in items if disagreement(item.member_scores) == best])


def pick_thompson(items: Sequence, rng: random.Random):
    informative = []
    for item in items:
        g = gaps(item.member_scores)
        if g is None:
            informative.append(item)
            continue
        k1, k2 = rng.randrange(len(g)), rng.randrange(len(g))
        if (g[k1] > 0) != (g[k2] > 0):
            informative.append(item)
    return rng.choice(informative or list(items))


STRATEGIES: dict[str, Callable] = {"uniform": pick_uniform, "uncertainty": pick_uncertainty,
                                   "thompson": pick_thompson}
NEEDS_SCORES = ("uncertainty", "thompson")


def choose(items: Sequence, shown_counts: dict[int, int], strategy: str, rng: random.Random):
    """The next item among `items` (all open to the annotator), or None."""
    if not items:
        return None
    fewest = min(shown_counts.get(item.id, 0) for item in items)
    return STRATEGIES[strategy]([item for item in items if shown_counts.get(item.id, 0) == fewest], rng)
