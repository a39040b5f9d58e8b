"""The run folder: created or reopened under an exclusive lock, never overwritten unasked; the
resolved config, a reproducibility manifest, the data report and the final model live in it.

What happens when a run folder already holds a run, is in use, or is resumed with other
settings is documented in docs/runs.md; the allow-list of settings a resume may change is
`RESUME_MAY_CHANGE` / `RESUME_MAY_GROW` below.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import itertools
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from alignlab import config as config_lib
from alignlab.fingerprint import file_sha256
from alignlab.train.checkpoint import list_checkpoints
from alignlab.train.distributed import world_size as _world_size

_PACKAGES = ("alignlab", "torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors")

LOCK_NAME = "run.lock"
# files whose presence means that a folder holds (part of) a run
RUN_MARKERS = ("config.yaml", "manifest.json", "metrics.jsonl", "checkpoints", "final", "summary.json", "rollouts",
               "reference_logps.safetensors", "reference_logps.pt", "data_report.json", "eval_before.json")
# settings a resume may change: they decide what is logged, shown, kept or how often, never a
# value any optimizer step depends on (evaluation runs without gradients on its own generator)
RESUME_MAY_CHANGE = frozenset({"output_dir", "resume", "overwrite", "progress", "log_every", "report_to",
                               "eval_every", "save_every", "keep_checkpoints", "max_bad_steps"})
# settings a resume may raise, to train longer (0 max_steps: "all epochs")
RESUME_MAY_GROW = ("max_steps", "epochs", "iterations")
# data settings: compared by content (the manifest's sha256), so a moved file is the same data
DATA_FIELDS = ("train_data", "eval_data", "ptx_data")


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (holds another run, is in use, resume mismatch)."""


@dataclass
class _OpenRun:
    path: Path
    lock: object
    resumed_from: Path | None = None
    changes: dict = field(default_factory=dict)
    fingerprints: dict = field(default_factory=dict)


_OPEN: dict[str, _OpenRun] = {}  # run folders this process holds, by resolved path


def make_run_dir(cfg, algorithm: str, *, dry_run: bool = False) -> Path:
    """Create or reopen the run folder of `cfg` and lock it for the life of this process's run.

    Refuses (RunFolderError, before any slow work) a folder that holds a run unless
    `cfg.resume` continues it or `cfg.overwrite` moves it aside; a folder another process is
    running in; and a resume whose settings or data would change the training trajectory."""
    resume, overwrite = getattr(cfg, "resume", ""), getattr(cfg, "overwrite", False)
    if resume and overwrite:
        raise RunFolderError("resume and overwrite contradict each other: --resume continues the run in the "
                             "folder, --overwrite moves it aside to start a new one; pick one")
    path = _target_dir(cfg, algorithm, resume, dry_run)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"output folder {path} is a file, not a folder; choose another --output-dir")
    if resume == "latest" and not path.is_dir():
        raise RunFolderError(f"--resume latest: {path} does not exist; --output-dir must name the run to continue")
    if dry_run:  # a dry run writes nothing: it only checks what the run would find
        if resume and path.is_dir():
            _check_resume(cfg, algorithm, path, resume, _OpenRun(path, None))
        elif _holds_run(path) and not overwrite:
            raise _holds_run_error(path)
        return path
    path.mkdir(parents=True, exist_ok=True)
    lock = _lock(path)
    try:
        run = _OpenRun(path, lock)
        if resume:
            _check_resume(cfg, algorithm, path, resume, run)
        elif _holds_run(path):
            if not overwrite:
                raise _holds_run_error(path)
            lock = run.lock = _move_aside_locked(path, lock)
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    _OPEN[str(path.resolve())] = run
    return path


def _holds_run_error(path: Path) -> RunFolderError:
    return RunFolderError(f"{path} already holds a run ({_describe(path)}): continue it with --resume latest, write "
                          f"to another --output-dir, or pass --overwrite to move it aside to {path.name}.old-<time>")


def release_run(run_dir: Path) -> None:
    """Unlock a run folder at the end of its run (a crash or kill releases it with the process)."""
    run = _OPEN.pop(str(Path(run_dir).resolve()), None)
    if run is not None and run.lock is not None:
        run.lock.close()


def _target_dir(cfg, algorithm: str, resume: str, dry_run: bool) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    if resume and resume != "latest":  # a checkpoint folder: its run is <run>/checkpoints/step-N
        return Path(resume).parent.parent
    if resume:
        raise RunFolderError("--resume latest needs --output-dir: the run folder to continue")
    base = Path("runs") / f"{algorithm}-{time.strftime('%Y%m%d-%H%M%S')}"
    for k in itertools.count(1):  # runs started in the same second get -2, -3, ...
        path = base if k == 1 else base.with_name(f"{base.name}-{k}")
        if dry_run:
            if not path.exists():
                return path
            continue
        try:
            path.mkdir(parents=True)  # atomic: two processes never get the same folder
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def _lock(path: Path):
    previous = _OPEN.pop(str(path.resolve()), None)
    if previous is not None and previous.lock is not None:
        # an earlier run of this same process that ended by an exception (Ctrl-C, an abort)
        # without releasing: flock belongs to the open file, so it would block our new one
        previous.lock.close()
    handle = open(path / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunFolderError(f"{path} is in use by another alignlab run ({holder}); wait for it to end, "
                             "or choose another --output-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle


def _holds_run(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_MARKERS)


def _describe(path: Path) -> str:
    manifest = _read_json(path / "manifest.json")
    parts = [str(manifest.get("algorithm", "unknown algorithm"))]
    if manifest.get("started"):
        parts.append(f"started {manifest['started']}")
    found = list_checkpoints(path / "checkpoints")
    if (path / "summary.json").is_file() and (path / "final").is_dir():
        parts.append("finished")
    elif found:
        parts.append(f"stopped at {found[-1].name}")
    else:
        parts.append("no checkpoint")
    return ", ".join(parts)


def aside_name(path: Path) -> Path:
    """A free sibling name for `path` moved aside: NAME.old-<time>[-k][.suffix for files]."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stem, suffix = (path.stem, path.suffix) if path.is_file() else (path.name, "")
    for k in itertools.count(1):
        candidate = path.with_name(f"{stem}.old-{stamp}{'' if k == 1 else f'-{k}'}{suffix}")
        if not candidate.exists():
            return candidate
    raise AssertionError("unreachable")


def move_aside(path: Path) -> Path:
    """Rename `path` (a file or folder) to a free sibling name, say so, return the new name."""
    target = aside_name(path)
    os.replace(path, target)
    print(f"alignlab: overwrite: moved the previous {path} to {target}", file=sys.stderr)
    return target


def _move_aside_locked(path: Path, lock):
    """--overwrite: move the locked old run aside (its lock goes with it) and lock a fresh folder."""
    move_aside(path)
    lock.close()
    path.mkdir(parents=True)
    return _lock(path)


def refuse_existing_output(path: str | Path, overwrite: bool, *, move: bool = True) -> None:
    """For commands writing one output file (bon --output): refuse an existing one unless told to
    overwrite it; then (with `move`) move it aside."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise RunFolderError(f"{path} already exists: choose another --output, or pass --overwrite to move it "
                             f"aside to {aside_name(path).name}")
    if path.exists() and move:
        move_aside(path)


# -- resume ----------------------------------------------------------------------------------------
def _check_resume(cfg, algorithm: str, path: Path, resume: str, run: _OpenRun) -> None:
    if resume == "latest":
        found = list_checkpoints(path / "checkpoints")
        if not found:
            raise RunFolderError(f"--resume latest: {path} has no checkpoint yet ({_describe(path)}); start it again "
                                 "with --overwrite (moves the folder aside) or write to another --output-dir")
        source_run, run.resumed_from = path, found[-1]
    else:
        checkpoint = Path(resume)
        if not (checkpoint / "state.json").is_file():
            raise RunFolderError(f"--resume {checkpoint}: not a checkpoint folder (no state.json)")
        source_run, run.resumed_from = checkpoint.parent.parent, checkpoint
        if source_run.resolve() != path.resolve() and _holds_run(path):
            raise RunFolderError(f"{path} already holds a run ({_describe(path)}); resume {checkpoint} into "
                                 "its own run folder or an empty --output-dir")
    saved = _read_yaml(source_run / "config.yaml")
    manifest = _read_json(source_run / "manifest.json")
    if manifest.get("algorithm") not in (None, algorithm):
        raise RunFolderError(f"--resume: {source_run} is a {manifest['algorithm']} run, not {algorithm}")
    worlds = (manifest.get("world_size", 1), _world_size())
    refused, allowed = resume_differences(saved, cfg, manifest.get("data", {}), run.fingerprints, worlds=worlds)
    if refused:
        raise RunFolderError(
            f"--resume: these settings differ from {source_run / 'config.yaml'} and would change the run's "
            f"training: {'; '.join(refused)}. Resume with the run's own settings, or start a new run "
            "(another --output-dir, or --overwrite)")
    run.changes = allowed


def resume_differences(saved: dict, cfg, saved_data: dict, fingerprints: dict, *, worlds: tuple[int, int] = (1, 1)
                       ) -> tuple[list[str], dict]:
    """Compare a run's saved config (and the sha256 of its data) with `cfg`: (refused differences
    as readable lines, allowed ones as {name: [old, new]}). `fingerprints` collects the sha256 of
    the current data files computed here. `worlds` (processes of the saved run, of this one): a
    resume on another number of processes keeps the global batch (batch_size x grad_accum x
    processes), so grad_accum may change exactly as far as that product stays the same."""
    current = json.loads(json.dumps(config_lib.to_dict(cfg), default=str))
    refused, allowed = [], {}
    old_world, new_world = worlds
    for name, new in current.items():
        if name in ("resume", "overwrite"):  # how this invocation opens the run, not a setting of it
            continue
        if name == "grad_accum" and old_world != new_world:
            old = saved.get(name, new)
            if old * old_world != new * new_world:
                refused.append(f"grad_accum {old!r} -> {new!r}: the global batch would change from "
                               f"{old} x {old_world} process(es) to {new} x {new_world} (keep grad_accum x processes "
                               f"at {old * old_world})")
            elif old != new:
                allowed[name] = [old, new]
            continue
        if name not in saved or saved[name] == new:
            if name in DATA_FIELDS and new and name in saved:
                _data_change(name, saved[name], new, saved_data, fingerprints, refused, allowed)
            continue
        old = saved[name]
        if name in RESUME_MAY_CHANGE:
            allowed[name] = [old, new]
        elif name in RESUME_MAY_GROW and _grows(name, old, new):
            allowed[name] = [old, new]
        elif name in RESUME_MAY_GROW:
            refused.append(f"{name} {old!r} -> {new!r} (a resume may only raise it, to train longer)")
        elif name in DATA_FIELDS:
            _data_change(name, old, new, saved_data, fingerprints, refused, allowed)
        else:
            refused.append(f"{name} {old!r} -> {new!r}")
    return refused, allowed


def _grows(name: str, old, new) -> bool:
    if name == "max_steps":
        return new == 0 or (old != 0 and new >= old)
    return new >= old


def _data_change(name, old, new, saved_data, fingerprints, refused, allowed) -> None:
    """Same content under the same or another path: allowed (recorded if moved); other content: refused."""
    old_sha = saved_data.get(old)
    if not new or not Path(new).exists():
        if old != new:
            refused.append(f"{name} {old!r} -> {new!r}")
        return
    new_sha = fingerprints.setdefault(new, file_sha256(new))
    if old_sha is None:  # the run recorded no fingerprint for it (in-memory data, a lab task)
        if old != new:
            refused.append(f"{name} {old!r} -> {new!r}")
    elif old_sha != new_sha:
        refused.append(f"{name} {new}: its content changed since the run started (sha256 {old_sha[:12]}... -> "
                       f"{new_sha[:12]}...)")
    elif old != new:
        allowed[name] = [old, new]


def resume_command(argv: list[str], run_dir: Path) -> str:
    """The command line that continues the run `argv` (alignlab's arguments) was writing to."""
    out, i = [], 0
    drop = {"--resume": True, "--overwrite": False, "--output-dir": True, "--output_dir": True}
    while i < len(argv):
        key = argv[i].split("=", 1)[0]
        if key in drop:
            takes_value = drop[key] and "=" not in argv[i] and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            i += 2 if takes_value else 1
            continue
        out.append(argv[i])
        i += 1
    return shlex.join(["alignlab", *out, "--output-dir", str(run_dir), "--resume", "latest"])


# -- header ----------------------------------------------------------------------------------------
def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    return config_lib.load_yaml(path)


def write_run_header(run_dir: Path, cfg, algorithm: str, data_files: list[str]) -> None:
    """Save the resolved config and a manifest that says how to reproduce this run. A resumed
    run keeps its manifest and appends what this resume changed under "resumed"."""
    import dataclasses

    run = _OPEN.get(str(Path(run_dir).resolve()))
    fingerprints = run.fingerprints if run is not None else {}
    data = {f: fingerprints.get(f) or file_sha256(f) for f in data_files if f and Path(f).exists()}
    manifest_path = run_dir / "manifest.json"
    manifest = _read_json(manifest_path) if getattr(cfg, "resume", "") else {}
    saved = dataclasses.replace(cfg, resume="", overwrite=False) if hasattr(cfg, "overwrite") else cfg
    config_lib.save(saved, run_dir / "config.yaml")
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if manifest:
        manifest.setdefault("data", {}).update(data)  # a moved data file: its new path, same sha256
        manifest.setdefault("resumed", []).append({
            "at": now, "command": sys.argv, "from": str(run.resumed_from) if run and run.resumed_from else cfg.resume,
            "changed": run.changes if run is not None else {}, "git_commit": _git_commit(), "packages": _versions(),
            "data": data, "world_size": _world_size()})
        manifest["world_size"] = _world_size()  # the processes the run's latest checkpoints are written by
    else:
        manifest = {
            "algorithm": algorithm,
            "command": sys.argv,
            "seed": getattr(cfg, "seed", None),
            "git_commit": _git_commit(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": _versions(),
            "data": data,
            "non_default_settings": {k: v[1] for k, v in config_lib.differences(cfg).items()},
            "started": now,
            "world_size": _world_size(),  # processes: a resume keeps the global batch (resume_differences)
        }
    manifest_path.write_text(json.dumps(manifest, indent=1, default=str))
