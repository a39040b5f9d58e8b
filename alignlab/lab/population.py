"""Populations of simulated users in groups whose gold rewards conflict: the pluralistic lab.

Each user is one `BradleyTerryAnnotator` with its own id (written to every record's `annotator`
field) that judges by its group's gold reward, with the group's temperature tau and label-flip
probability epsilon (alignlab.lab.annotators). The groups of the default population disagree:

    effusive(y) = vader(y)                                  in [-1, 1]
    concise(y)  = length_reward(y, T=6) - |vader(y)|        in [-2.5, 1]

`effusive` is the sentiment task's gold reward (lab/sentiment.py); `concise` rewards a short
one-line answer (the length task's gold, lab/length.py, with a 6-word target) that takes no side.
So the long, effusive answers the first group prefers are what the second likes least.

The responses are a fixed candidate pool per prompt (`candidate_pool`): sentences about the
prompt's topic from the sentiment task, built from phrases of graded sentiment (negative to
effusive) and optional neutral padding, so the pool spans both gold rewards; K of them are drawn
per prompt with a seed. Policies on this pool are exact softmaxes (alignlab.pluralistic.policy).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from alignlab.data.records import PairwiseRecord
from alignlab.lab.annotators import BradleyTerryAnnotator, make_preference_pairs
from alignlab.lab.length import length_reward
from alignlab.lab.sentiment import SentimentTask, vader_compound

CONCISE_TARGET_WORDS = 6
_CORES = (  # graded sentiment, from negative to effusive; {t}: the topic
    "{t} is dull, annoying and a little sad.",
    "{t} is ugly and a miserable waste of time.",
    "{t} is there.",
    "{t} exists.",
    "{t} is an ordinary thing.",
    "{t} is nice.",
    "{t} is pleasant and useful.",
    "{t} is good and I like it.",
    "{t} is absolutely wonderful, delightful and amazing!",
    "I love {t}; it is brilliant, joyful and truly beautiful!",
    "{t} is a fantastic, glorious and inspiring treasure that fills every day with joy!",
)
_PADDING = ("", " It can be found in many towns and is used by many people on most days of the week.",
            " People often see it in the morning, at noon and in the evening, in the city and in the country.")


def effusive_reward(texts: Sequence[str]) -> torch.Tensor:
    """(N,) the effusive group's gold reward: VADER compound sentiment, in [-1, 1]."""
    return vader_compound(list(texts))


def concise_reward(texts: Sequence[str]) -> torch.Tensor:
    """(N,) the concise group's gold reward: length_reward(y, 6) - |vader(y)|, in [-2.5, 1]."""
    return length_reward(list(texts), CONCISE_TARGET_WORDS) - vader_compound(list(texts)).abs()


GROUP_REWARDS: dict[str, Callable[[Sequence[str]], torch.Tensor]] = {
    "effusive": effusive_reward,
    "concise": concise_reward,
}


def candidate_pool(topic: str, k: int, seed: int = 0) -> list[str]:
    """k distinct responses about `topic` (each sentiment phrase with each padding, drawn with
    `seed`); k <= 33, the number of combinations."""
    combos = [(c, p) for c, p in itertools.product(_CORES, _PADDING)]
    if not 2 <= k <= len(combos):
        raise ValueError(f"candidate_pool: k must be in [2, {len(combos)}], got {k}")
    chosen = random.Random(f"{seed}:{topic}").sample(combos, k)
    return [(core.format(t=topic) + pad)[0].upper() + (core.format(t=topic) + pad)[1:] for core, pad in chosen]


@dataclass(frozen=True)
class GroupSpec:
    name: str
    """A key of GROUP_REWARDS: the group's gold reward."""
    users: int
    """How many users the group has."""
    temperature: float = 0.2
    """Bradley-Terry temperature tau of every user of the group (gold-reward units)."""
    flip_prob: float = 0.05
    """Probability epsilon that a user's sampled choice is flipped."""


def parse_groups(text: str, temperature: float, flip_prob: float) -> list[GroupSpec]:
    """"effusive=16,concise=4" -> one GroupSpec per group (users per group), in order."""
    groups = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, users = part.partition("=")
        if name not in GROUP_REWARDS:
            raise ValueError(f"groups: unknown group {name!r}; the groups are: {', '.join(GROUP_REWARDS)}")
        if not users.isdigit() or int(users) < 1:
            raise ValueError(f"groups: {part!r} needs a user count >= 1 (NAME=USERS)")
        groups.append(GroupSpec(name, int(users), temperature, flip_prob))
    if len({g.name for g in groups}) != len(groups) or not groups:
        raise ValueError(f"groups: need distinct group names, got {text!r}")
    return groups


class Population:
    """Users in groups; user u (id "<group>-<n>") judges by its group's gold reward.

    users[i] is the id of user i, group_of[i] the index of its group in `groups`."""

    def __init__(self, groups: Sequence[GroupSpec], seed: int = 0):
        self.groups = list(groups)
        self.users, self.group_of, self.annotators = [], [], []
        for g, spec in enumerate(self.groups):
            for n in range(spec.users):
                uid = f"{spec.name}-{n}"
                self.users.append(uid)
                self.group_of.append(g)
                self.annotators.append(BradleyTerryAnnotator(
                    GROUP_REWARDS[spec.name], temperature=spec.temperature, flip_prob=spec.flip_prob,
                    seed=seed * 100_003 + len(self.users), annotator_id=uid))

    def gold(self, texts: Sequence[str]) -> torch.Tensor:
        """(G, N) gold reward of each group for each text."""
        return torch.stack([GROUP_REWARDS[g.name](texts) for g in self.groups])

    def label(self, prompts: Sequence, pools: Sequence[Sequence[str]], pairs_per_user: int,
              seed: int = 0) -> list[PairwiseRecord]:
        """`pairs_per_user` comparisons per user, each of two distinct candidates of a random
        prompt's pool; records carry the user's id in `annotator`, user by user."""
        rng = random.Random(seed)
        records = []
        for annotator in self.annotators:
            rows = [rng.randrange(len(prompts)) for _ in range(pairs_per_user)]
            picks = [rng.sample(range(len(pools[i])), 2) for i in rows]
            records += make_preference_pairs([prompts[i] for i in rows], [pools[i][a] for i, (a, _) in zip(rows, picks)],
                                             [pools[i][b] for i, (_, b) in zip(rows, picks)], annotator)
        return records


def topic_prompts(n_train: int, n_eval: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Disjoint train / eval topic lists of the sentiment task (its seeded split)."""
    task = SentimentTask()
    order = list(range(len(task)))
    random.Random(seed).shuffle(order)
    if n_train + n_eval > len(order):
        raise ValueError(f"asked for {n_train} + {n_eval} topics, the sentiment task has {len(order)}")
    return [task.topics[i] for i in order[:n_train]], [task.topics[i] for i in order[n_train:n_train + n_eval]]
