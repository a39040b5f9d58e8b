"""Each epoch's micro-batches for the offline trainers: the training examples in a shuffled order
of their own, cut into micro-batches once per epoch."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

import torch

B = TypeVar("B")


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The order of n training examples in `epoch`: a permutation from a generator seeded by
    (seed, epoch) alone, so an epoch's order is the same after a resume and leaves the global RNG
    untouched."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


class EpochBatches(Generic[B]):
    """`batches(epoch)`: `build(order)` on the epoch's order, computed once and kept until another
    epoch is asked for (the loop asks for the same epoch at every step)."""

    def __init__(self, seed: int, n: int, build: Callable[[list[int]], list[B]]):
        self.seed, self.n, self.build = seed, n, build
        self._cache: tuple[int, list[B]] | None = None

    def __call__(self, epoch: int) -> list[B]:
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self.build(epoch_order(self.seed, epoch, self.n)))
        return self._cache[1]


def chunks(order: list[int], size: int) -> list[list[int]]:
    """`order` cut into consecutive runs of `size` (the last one shorter)."""
    return [order[i : i + size] for i in range(0, len(order), size)]
