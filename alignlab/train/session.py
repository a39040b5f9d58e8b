"""The one run setup every trainer shares, as a few small named steps:

    session = open_session(cfg, name, dry_run=...)   # settings checked, run folder taken, seed set
    ... the trainer builds its data (session.train_examples / eval_examples, session.report) ...
    if dry_run: return describe(session, ...)         # the one dry run (alignlab.train.dryrun)
    start_training(session, model)                   # accelerate, run header, data report
    run_training(session, algorithm, owner, scorer, save=...)   # the loop, the final save, summary
    close_session(session)                           # summary.json, the run folder released

`TrainingSession` is the one result type: every trainer's Python API returns it (its `summary`
is also written to the run folder's summary.json, its `final_dir` holds the trained model).

Launched on several processes (accelerate launch, torchrun), the run folder is taken, written
and released by the main process only; the others wait for it and use the same folder. What a
trainer must do to be data-parallel is in alignlab.train.distributed and docs/distributed.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from alignlab.data import DataReport, load_records
from alignlab.train import distributed as dist
from alignlab.train import zero
from alignlab.train.errors import DiskFull, is_disk_full
from alignlab.train.loop import LoopState, sharded_model, train_loop
from alignlab.train.run import RunFolderError, make_run_dir, release_run, write_run_header

MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


@dataclass
class TrainingSession:
    """A run of any trainer: its settings, folder, data, model and, once trained, its results."""

    cfg: Any
    algorithm_name: str
    run_dir: Path
    report: DataReport = field(default_factory=DataReport)
    train_examples: list = field(default_factory=list)  # pairs (DPO), items (RM), prompt rows (online)
    eval_examples: list = field(default_factory=list)
    model: Any = None
    tokenizer: Any = None
    accelerator: Any = None
    pad_token_id: int = 0
    dry_run_text: str | None = None
    state: LoopState | None = None
    final_dir: Path | None = None
    summary: dict = field(default_factory=dict)


def open_session(cfg, algorithm_name: str, *, dry_run: bool = False) -> TrainingSession:
    """Check every setting (before anything loads or is written), take the run folder (refusing
    one that holds another run, locking it for this one) and seed everything."""
    from transformers import set_seed

    cfg.validate()
    cfg.preflight()
    run_dir = _take_run_dir(cfg, algorithm_name, dry_run)
    set_seed(cfg.seed)
    return TrainingSession(cfg, algorithm_name, run_dir)


def _take_run_dir(cfg, algorithm_name: str, dry_run: bool) -> Path:
    """The main process creates and locks the run folder; the others get its path (or the same
    one-line refusal) from it, so that N processes never race for one folder."""
    if dry_run or dist.world_size() == 1:
        return make_run_dir(cfg, algorithm_name, dry_run=dry_run)
    path = error = None
    if dist.is_main():
        try:
            path = str(make_run_dir(cfg, algorithm_name, dry_run=dry_run))
        except Exception as exc:  # every process must stop, with the main process's message
            dist.broadcast_json([None, str(exc)])
            raise
    path, error = dist.broadcast_json([path, error])
    if error is not None:
        raise RunFolderError(error)
    return Path(path)


def load_split(cfg, path: str, records, run_dir: Path, name: str, report: DataReport, *, to_pairs: bool = True) -> list:
    """The records of one split: given in memory, or read from `path` (counted in `report`);
    `to_pairs`: rankings and ratings arrive converted to pairs (by `cfg.pairing`)."""
    if records is not None:
        return list(records)
    if not path:
        return []
    result = load_records(path, format=cfg.data_format, columns=cfg.columns or None, skip_invalid=cfg.skip_invalid,
                          rejects_path=str(run_dir / f"rejects-{name}.jsonl")
                          if cfg.skip_invalid and run_dir.is_dir() and dist.is_main() else None,
                          pairing=cfg.pairing, seed=cfg.seed, to_pairs=to_pairs)
    report.merge(result.report)
    return list(result.records)


def split_eval(cfg, train_records: list, eval_records: list, report: DataReport) -> tuple[list, list]:
    """Hold out `eval_fraction` of the training records (seeded) when no eval data is given."""
    if eval_records or cfg.eval_fraction <= 0:
        return train_records, eval_records
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(train_records), generator=g).tolist()
    n_eval = max(1, int(round(cfg.eval_fraction * len(train_records))))
    report.add("held out for evaluation (eval_fraction)", n_eval)
    return [train_records[i] for i in order[n_eval:]], [train_records[i] for i in order[:n_eval]]


def require_examples(session: TrainingSession, what: str) -> None:
    """A clear one-line error when loading and filtering left nothing to train on."""
    if not session.train_examples:
        cfg = session.cfg
        raise ValueError(f"{cfg.train_data or 'train records'}: no training {what} left after loading and filtering "
                         f"({'; '.join(session.report.lines()) or 'no records given'})")


def start_training(session: TrainingSession, model, *, data_files: list[str] | None = None) -> None:
    """Put `model` on accelerate's device, write the run header (resolved config, manifest) and
    the data report: from here on the run folder holds this run."""
    from accelerate import Accelerator

    cfg = session.cfg
    dist.state()  # the process group first, from the launcher's environment
    session.accelerator = Accelerator(mixed_precision=MIXED_PRECISION[cfg.precision], cpu=dist.cpu_only())
    check_engine(session.accelerator, cfg)
    session.model = model.to(session.accelerator.device)
    files = data_files if data_files is not None else [cfg.train_data, cfg.eval_data]
    if dist.is_main():
        write_run_header(session.run_dir, cfg, session.algorithm_name, files)
        (session.run_dir / "data_report.json").write_text(json.dumps(session.report.to_dict(), indent=1))
    dist.barrier()
    if session.report.lines():
        session.accelerator.print("alignlab data report:\n  " + "\n  ".join(session.report.lines()))
    session.accelerator.print(f"alignlab: {len(session.train_examples)} train / {len(session.eval_examples)} eval "
                              f"examples; run folder {session.run_dir}")


def check_engine(accelerator, cfg) -> None:
    """Refuse (one line) what the loop cannot drive, and say when a sharding config is not applied.
    Under DeepSpeed, its config's "auto" entries are filled from `cfg` and a disagreement refused."""
    import os

    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        zero.deepspeed_settings(cfg, ds, dist.world_size())
        accelerator.print(f"alignlab: DeepSpeed {zero.describe(ds)}")
    if kind == DistributedType.FSDP and accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise ValueError("FSDP: alignlab trains with FSDP2 only; set fsdp_version: 2 in the accelerate config "
                         "(configs/accelerate/fsdp.yaml)")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and kind != DistributedType.FSDP:
        accelerator.print(f"alignlab: the accelerate config asks for FSDP, but accelerate shards only on GPU processes; "
                          f"training unsharded data-parallel ({kind.value})")


def run_training(session: TrainingSession, algorithm, owner, scorer, *, save: Callable[[], Path],
                 loop_cfg=None) -> TrainingSession:
    """The one loop over `algorithm` (`owner` holds the trained parameters, `scorer` is the module
    the algorithm calls), then `save()` on the main process (it returns the final folder). A full
    disk becomes one line that names the intact checkpoint. Fills the summary's common keys."""
    cfg = session.cfg
    try:
        session.state = train_loop(loop_cfg or cfg, algorithm, owner, scorer, session.accelerator, session.run_dir)
        if sharded_model(session.accelerator) and not zero.is_deepspeed(session.accelerator):
            dist.unshard(owner)  # the final save runs on the main process alone (the loop unshards DeepSpeed's)
        if session.accelerator.is_main_process:
            session.final_dir = save()
    except OSError as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFull):
            raise DiskFull(session.run_dir, exc) from exc
        raise
    state = session.state
    evals = [r for r in state.history if any(k.startswith("eval/") for k in r)]
    unit = getattr(algorithm, "unit_name", "examples")
    session.summary.update({
        "algorithm": session.algorithm_name, "steps": state.step, f"{unit}_seen": state.examples_seen,
        "train_seconds": state.train_seconds,
        f"{unit}_per_second": state.examples_seen / max(state.train_seconds, 1e-9),
        "skipped_steps": state.skipped_steps,
        "final_eval": {k[5:]: v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else {},
        "data_report": session.report.to_dict(), "run_dir": str(session.run_dir),
        "final_dir": str(session.final_dir) if session.final_dir else None,
    })
    return session


def close_session(session: TrainingSession) -> TrainingSession:
    """Write summary.json and release the run folder (main process; the others wait for it)."""
    if dist.is_main():
        (session.run_dir / "summary.json").write_text(json.dumps(session.summary, indent=1, default=float))
        release_run(session.run_dir)
    dist.barrier()
    return session
