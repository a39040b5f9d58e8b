"""Simulated annotators: pairwise preferences drawn from a known gold reward.

Bradley-Terry (Bradley & Terry 1952; the preference model RLHF assumes, Ouyang et al. 2022,
arXiv:2203.02155 eq. 1; Rafailov et al. 2023, arXiv:2305.18290 eq. 1). With gold reward r and
temperature tau, response a is preferred to b with probability

    p(a > b) = sigmoid((r(a) - r(b)) / tau)

and then, with probability `flip_prob` = epsilon, the choice is flipped (label noise independent
of the responses, as in the cDPO / robust-DPO noise model, arXiv:2403.00409), so overall

    P(choose a) = (1 - epsilon) * p(a > b) + epsilon * (1 - p(a > b)).

tau -> 0 gives a noiseless judge of the gold reward; a large tau a nearly random one.

An annotator implements `prefer(prompts, a, b) -> BoolTensor` (True: a preferred) and, after each
call, exposes `last_annotators` (the id of whoever judged each comparison) and `last_prob_first`
(that judge's p(a > b) before flips); `make_preference_pairs` turns the choices into records.
`AnnotatorPopulation` mixes several annotators, one judge per comparison, for pluralistic studies.
"""

from __future__ import annotations

import itertools
from typing import Callable, Protocol, Sequence

import torch

from alignlab.data.records import PairwiseRecord, Prompt

GoldFn = Callable[[list[str]], torch.Tensor]


class Annotator(Protocol):
    last_annotators: list[str]
    last_prob_first: torch.Tensor

    def prefer(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> torch.Tensor: ...


def _check_lengths(prompts, a, b) -> int:
    if not len(prompts) == len(a) == len(b):
        raise ValueError(f"prompts, a and b must have the same length, got {len(prompts)}, {len(a)}, {len(b)}")
    return len(a)


class BradleyTerryAnnotator:
    """One simulated annotator: Bradley-Terry on `gold_fn` at `temperature`, then label flips.

    Args:
        gold_fn: response texts -> gold rewards, (N,) tensor (e.g. `SentimentTask.gold_reward`).
        temperature: tau > 0, in units of the gold reward.
        flip_prob: epsilon in [0, 1], the probability that a sampled choice is flipped.
        seed: seed of the annotator's own `torch.Generator` (the global RNG is untouched).
        annotator_id: written to each record's `annotator` field.
    """

    def __init__(self, gold_fn: GoldFn, temperature: float = 1.0, flip_prob: float = 0.0, seed: int = 0,
                 annotator_id: str = "bt"):
        if not temperature > 0:
            raise ValueError(f"BradleyTerryAnnotator: temperature must be > 0, got {temperature}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"BradleyTerryAnnotator: flip_prob must be in [0, 1], got {flip_prob}")
        self.gold_fn, self.temperature, self.flip_prob = gold_fn, temperature, flip_prob
        self.annotator_id = annotator_id
        self.generator = torch.Generator().manual_seed(seed)
        self.last_annotators: list[str] = []
        self.last_prob_first = torch.zeros(0)

    def prob_first(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        """p(a_i > b_i) = sigmoid((r(a_i) - r(b_i)) / tau), (N,) float32, before label flips."""
        if _check_lengths(prompts, a, b) == 0:
            return torch.zeros(0)
        return self._bt_prob(self.gold_fn(list(a)), self.gold_fn(list(b)))

    def _bt_prob(self, gold_a, gold_b) -> torch.Tensor:
        r_a, r_b = torch.as_tensor(gold_a, dtype=torch.float32), torch.as_tensor(gold_b, dtype=torch.float32)
        return torch.sigmoid((r_a - r_b) / self.temperature)

    def choice_prob(self, gold_a: torch.Tensor, gold_b: torch.Tensor) -> torch.Tensor:
        """P(the label says a_i > b_i) from gold rewards, flips included:
        (1 - epsilon) sigmoid((r(a) - r(b)) / tau) + epsilon (1 - sigmoid(...)); (N,)."""
        p = self._bt_prob(gold_a, gold_b)
        return (1 - self.flip_prob) * p + self.flip_prob * (1 - p)

    def prefer(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        """Sampled choices, (N,) bool, True where a_i is preferred to b_i."""
        p = self.prob_first(prompts, a, b)  # (N,)
        # Both draws are always made, so the label stream for a seed does not depend on flip_prob.
        choice = torch.rand(p.shape, generator=self.generator) < p
        flip = torch.rand(p.shape, generator=self.generator) < self.flip_prob
        self.last_annotators = [self.annotator_id] * len(p)
        self.last_prob_first = p
        return choice ^ flip


class AnnotatorPopulation:
    """Several annotators; each comparison is judged by one of them, drawn with `weights`.

    `prefer` returns the choices; `last_annotators[i]` is the id of the judge of comparison i
    and `last_prob_first[i]` that judge's p(a_i > b_i).
    """

    def __init__(self, annotators: Sequence[BradleyTerryAnnotator], weights: Sequence[float] | None = None,
                 seed: int = 0):
        if not annotators:
            raise ValueError("AnnotatorPopulation needs at least one annotator")
        ids = [x.annotator_id for x in annotators]
        if len(set(ids)) != len(ids):
            raise ValueError(f"AnnotatorPopulation: annotator ids must be unique, got {ids}")
        w = torch.ones(len(annotators)) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (len(annotators),) or (w < 0).any() or not w.sum() > 0:
            raise ValueError(f"AnnotatorPopulation: need {len(annotators)} non-negative weights with a "
                             f"positive sum, got {weights}")
        self.annotators, self.weights = list(annotators), w / w.sum()
        self.generator = torch.Generator().manual_seed(seed)
        self.last_annotators: list[str] = []
        self.last_prob_first = torch.zeros(0)

    def assign(self, n: int) -> torch.Tensor:
        """Index of the judge of each of n comparisons, (n,) long, drawn i.i.d. from the weights."""
        if n == 0:
            return torch.zeros(0, dtype=torch.long)
        return torch.multinomial(self.weights, n, replacement=True, generator=self.generator)

    def prob_first(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        """The population's marginal p(a_i > b_i) = sum_k w_k p_k(a_i > b_i), before flips."""
        per_judge = torch.stack([x.prob_first(prompts, a, b) for x in self.annotators])  # (K, N)
        return (self.weights.to(per_judge.dtype)[:, None] * per_judge).sum(0)

    def prefer(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        n = _check_lengths(prompts, a, b)
        judge = self.assign(n)  # (N,)
        choices, p = torch.zeros(n, dtype=torch.bool), torch.zeros(n)
        for k, annotator in enumerate(self.annotators):
            rows = (judge == k).nonzero().flatten().tolist()
            if rows:
                choices[rows] = annotator.prefer([prompts[i] for i in rows], [a[i] for i in rows],
                                                 [b[i] for i in rows])
                p[rows] = annotator.last_prob_first
        self.last_annotators = [self.annotators[k].annotator_id for k in judge.tolist()]
        self.last_prob_first = p
        return choices


def make_preference_pairs(prompts: Sequence[Prompt], a_texts: Sequence[str], b_texts: Sequence[str],
                          annotator: Annotator) -> list[PairwiseRecord]:
    """One `PairwiseRecord` per comparison, oriented by the annotator's choice.

    Identical responses (a_i == b_i) are kept: the judge sees a coin flip (p = 1/2), and dropping
    them is the trainer's business. `meta` holds `p_first` (the judge's p(a > b) before flips),
    `chosen_first` (whether a was chosen) and `p_chosen` (the judge's probability of the label
    given, before flips: a soft label for calibration studies).
    """
    _check_lengths(prompts, a_texts, b_texts)
    choices = annotator.prefer(prompts, a_texts, b_texts).tolist()
    records = []
    for i, first in enumerate(choices):
        p_first = float(annotator.last_prob_first[i])
        chosen, rejected = (a_texts[i], b_texts[i]) if first else (b_texts[i], a_texts[i])
        records.append(PairwiseRecord(
            prompt=prompts[i], chosen=chosen, rejected=rejected, annotator=annotator.last_annotators[i],
            meta={"p_first": p_first, "chosen_first": bool(first), "p_chosen": p_first if first else 1 - p_first},
        ))
    return records


def label_groups(prompts: Sequence[Prompt], groups: Sequence[Sequence[str]], annotator: Annotator, *,
                 all_pairs: bool = True) -> list[PairwiseRecord]:
    """Label comparisons among each prompt's responses: `groups[i]` are the responses to
    `prompts[i]`. all_pairs: every pair of a group (k(k-1)/2 comparisons of the same k
    responses); otherwise k/2 disjoint pairs (0-1, 2-3, ...; an odd last response is unused).
    Records come prompt by prompt, in `combinations` order within a prompt."""
    if len(prompts) != len(groups):
        raise ValueError(f"label_groups: {len(prompts)} prompts but {len(groups)} response groups")
    comparisons = []  # (prompt, a, b)
    for prompt, group in zip(prompts, groups):
        pairs = (itertools.combinations(range(len(group)), 2) if all_pairs
                 else ((j, j + 1) for j in range(0, len(group) - 1, 2)))
        comparisons += [(prompt, group[x], group[y]) for x, y in pairs]
    return make_preference_pairs(*map(list, zip(*comparisons)), annotator) if comparisons else []
