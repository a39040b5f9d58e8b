"""Where metrics go: a JSONL file in the run folder, optionally TensorBoard and W&B."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Tracker:
    def __init__(self, run_dir: Path, report_to: list[str], config: dict, *, resume_step: int | None = None):
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # Drop lines past the checkpoint we resume from, so the file reads as one clean run.
            kept = [l for l in self.path.read_text().splitlines() if l and json.loads(l).get("step", 0) <= resume_step]
            self.path.write_text("".join(l + "\n" for l in kept))
        self._file = self.path.open("a")
        self._tb = self._wandb = None
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise RuntimeError("report_to tensorboard needs `pip install alignlab[tensorboard]`") from exc
            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        if "wandb" in report_to:
            try:
                import wandb
            except ImportError as exc:
                raise RuntimeError("report_to wandb needs `pip install wandb`") from exc
            self._wandb = wandb.init(project="alignlab", dir=str(run_dir), config=config)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
