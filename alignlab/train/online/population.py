"""Past iterates of the policy: MNPO's population, Nash-MP's proximal anchor, EGPO's pi_t.

MNPO's population of past iterates (Wu et al. 2025, arXiv:2509.23102): the policy's trainable
weights at the start of each of the last m iterations, pi_{t-m+1}, ..., pi_t.

Each iteration's snapshot is taken before it samples and kept in memory and in the run folder
(`RUN/population/iter-NNNNN.safetensors`, the trainable tensors only: the adapter under LoRA, all
weights under full fine-tuning), so a resumed run finds the same population. Snapshots that
leave the window are deleted. The loss's opponent term is the equally weighted mean of the
members' log-probs of the pair, sum_j lambda_j log pi_j(y) with lambda_j = 1/m."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from alignlab.train import distributed as dist


class Population:
    def __init__(self, directory: Path, model: torch.nn.Module, size: int):
        if size < 1:
            raise ValueError(f"population size must be >= 1, got {size}")
        self.directory, self.model, self.size = Path(directory), model, size
        self._kept: dict[int, dict[str, torch.Tensor]] = {}

    def members(self, iteration: int) -> list[int]:
        """The iterations whose policies form iteration `iteration`'s population, oldest first."""
        return list(range(max(0, iteration - self.size + 1), iteration + 1))

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def _path(self, iteration: int) -> Path:
        return self.directory / f"iter-{iteration:05d}.safetensors"

    def snapshot(self, iteration: int) -> None:
        """Keep the current weights as pi_iteration; forget members that left the window."""
        weights = {name: p.detach().to("cpu", copy=True).contiguous() for name, p in self._trainable().items()}
        self._kept[iteration] = weights
        first = self.members(iteration)[0]
        for old in [k for k in self._kept if k < first]:
            del self._kept[old]
        if dist.is_main():
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self._path(iteration).with_suffix(".tmp")
            save_file(weights, tmp)
            tmp.replace(self._path(iteration))
            for path in self.directory.glob("iter-*.safetensors"):
                if int(path.stem.split("-")[1]) < first:
                    path.unlink()

    def weights(self, iteration: int) -> dict[str, torch.Tensor]:
        if iteration not in self._kept:  # a resumed run: read back what the interrupted one kept
            path = self._path(iteration)
            if not path.is_file():
                raise ValueError(f"the snapshot of iteration {iteration} ({path}) is missing from the run "
                                 "folder; the past iterates cannot be rebuilt")
            self._kept[iteration] = load_file(str(path))
        return self._kept[iteration]

    def load(self, iteration: int) -> None:
        """Set the model's trainable weights to pi_iteration's (for good: EGPO's full step)."""
        params = self._trainable()
        weights = self._checked(iteration, params)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(weights[name])

    def _checked(self, iteration: int, params: dict) -> dict[str, torch.Tensor]:
        weights = self.weights(iteration)
        if set(weights) != set(params):
            raise ValueError(f"the snapshot of iteration {iteration} holds other tensors than the model's trainable "
                             "ones")
        return weights

    @contextlib.contextmanager
    def acting_as(self, iteration: int):
        """The model computes pi_iteration inside the block; its own weights come back after."""
        params = self._trainable()
        weights = self._checked(iteration, params)
        current = {name: p.detach().clone() for name, p in params.items()}
        try:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(weights[name])
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(current[name])

    def mean_logps(self, iteration: int, current_logps: torch.Tensor, logps_of) -> torch.Tensor:
        """(B, T) mean over the members of their per-token log-probs: `current_logps` for pi_iteration
        itself, `logps_of()` run under each earlier member's weights."""
        total = current_logps.clone()
        earlier = self.members(iteration)[:-1]
        for member in earlier:
            with self.acting_as(member):
                total += logps_of()
        return total / (len(earlier) + 1)
