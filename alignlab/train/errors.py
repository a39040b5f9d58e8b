"""Errors a training run ends with that the CLI prints as one line, with what to do next."""

from __future__ import annotations

import errno
from pathlib import Path

from alignlab.train.checkpoint import list_checkpoints


class DiskFull(OSError):
    """No space left on device while a run wrote to its folder; the message names the newest
    intact checkpoint (checkpoints are written to a temp folder and renamed, so a failed write
    never damages the previous one) and how to resume."""

    def __init__(self, run_dir: Path, cause: OSError):
        where = f" while writing {cause.filename}" if cause.filename else f" while writing to {run_dir}"
        done = list_checkpoints(Path(run_dir) / "checkpoints")
        if done:
            step = done[-1].name.split("-")[-1]
            then = (f"the newest intact checkpoint is {done[-1]} (step {step}); free some space, then rerun the "
                    f"same command with --output-dir {run_dir} --resume latest")
        else:
            then = "no checkpoint had been written yet; free some space and start the run again"
        super().__init__(errno.ENOSPC, f"no space left on device{where}: {then}")

    def __str__(self) -> str:
        return self.strerror


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC
