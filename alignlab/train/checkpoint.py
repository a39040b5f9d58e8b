"""Atomic checkpoints: trainable weights, optimizer, scheduler, RNG and data position.

Nothing is unpickled on load (a planted file in a run folder must not run code): weights and the
torch RNG states are safetensors, the Python/NumPy RNG states and the trainer state JSON, and the
optimizer and scheduler state dicts (tensors and numbers only) are read with
`torch.load(weights_only=True)`.

A checkpoint is written into a temp folder and renamed into place, so a crash mid-write leaves the
previous checkpoint intact. Only trainable parameters are saved (the LoRA adapter, or every weight
for full fine-tuning); frozen weights come back from the model source on resume.

A model sharded by FSDP or DeepSpeed is gathered whole first (`gathered_state`,
`alignlab.train.zero.gathered_state`; every process takes part) and its optimizer state is saved
by parameter name (state.json `optimizer_layout: "names"`), which loads sharded (FSDP, DeepSpeed)
and unsharded, on any number of processes.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

_STEP_DIR = re.compile(r"^step-(\d+)$")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors by name, without copying them (a full-model copy at every checkpoint
    was the peak of a run's memory); only a tensor whose storage another already uses is cloned,
    since safetensors refuses shared storage."""
    out, seen = {}, set()
    for n, p in model.named_parameters():
        if p.requires_grad:
            t = p.detach().contiguous()
            ptr = t.untyped_storage().data_ptr()
            out[n] = t.clone() if ptr in seen else t
            seen.add(ptr)
    return out


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely (corrupt, or not written by alignlab)."""


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_rng(state: dict[str, Any], directory: Path) -> None:
    """torch/CUDA generator states as safetensors, Python's and NumPy's as JSON."""
    tensors = {"torch": state["torch"], **{f"cuda.{i}": s for i, s in enumerate(state.get("cuda", []))}}
    save_file(tensors, directory / "rng.safetensors")
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    (directory / "rng.json").write_text(json.dumps({
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }))


def _load_rng(directory: Path) -> dict[str, Any]:
    tensors = _safe(load_file, directory / "rng.safetensors")
    saved = _safe(lambda p: json.loads(p.read_text()), directory / "rng.json")
    version, internal, gauss = saved["python"]
    name, keys, pos, has_gauss, cached = saved["numpy"]
    state = {"python": (version, tuple(internal), gauss),
             "numpy": (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached), "torch": tensors["torch"]}
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda:
        state["cuda"] = cuda
    return state


def _safe(read, path: Path):
    """Read one checkpoint file; any failure (a pickle refused by weights_only, a corrupt file)
    becomes one clear CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing (a checkpoint from an older alignlab, which saved "
                              "pickles, cannot be resumed)")
    try:
        return read(path)
    except (pickle.UnpicklingError, SafetensorError, ValueError, RuntimeError, EOFError, OSError, KeyError,
            TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint file {path} cannot be read safely and was not loaded ({first[:200]}); "
                              "it was not written by alignlab or is corrupt") from None


def _load_state_dict(path: Path) -> dict:
    return _safe(lambda p: torch.load(p, weights_only=True, map_location="cpu"), path)


def gathered_state(model, optimizer) -> tuple[dict, dict]:
    """(trainable weights, optimizer state by parameter name) of an FSDP-sharded `model`, whole on
    the main process (empty on the others). A collective: every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    weights = {k: v for k, v in get_model_state_dict(model, options=options).items() if k in trainable}
    return weights, get_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), options=options)


def save_checkpoint(directory: Path, step: int, model, optimizer, scheduler, state: dict, keep: int, *,
                    gathered: tuple[dict, dict] | None = None) -> Path:
    """`gathered`: the (weights, named optimizer state) of a sharded model (`gathered_state`)."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step}"
    tmp = directory / f".tmp-step-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights, optimizer_state = gathered if gathered is not None else (trainable_state(model), optimizer.state_dict())
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp / "trainable.safetensors")
    torch.save(optimizer_state, tmp / "optimizer.pt")
    if gathered is not None:
        state = {**state, "optimizer_layout": "names"}
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    _save_rng(rng_state(), tmp)
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _prune(directory, keep)
    return final


def _prune(directory: Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path, model, optimizer, scheduler, *, sharded: bool = False) -> dict:
    """Restore everything saved by `save_checkpoint`; returns the saved trainer state. `sharded`:
    `model` is FSDP-sharded (every process loads the whole file and keeps its shard)."""
    state = _safe(lambda p: json.loads(p.read_text()), path / "state.json")
    if sharded or state.get("optimizer_layout") == "names":
        return _load_by_name(path, model, optimizer, scheduler)
    weights = _safe(load_file, path / "trainable.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        raise RuntimeError(
            f"checkpoint {path} does not match the model: missing {missing[:3]}, unexpected {unknown[:3]}"
            " (was it written with the same model and LoRA settings?)"
        )
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer_state = _load_state_dict(path / "optimizer.pt")
    scheduler_state = _load_state_dict(path / "scheduler.pt")
    rng = _load_rng(path)
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    set_rng_state(rng)
    return state


def read_named_checkpoint(path: Path, model, *, engine: str = "FSDP") -> tuple[dict, dict, dict]:
    """(weights, optimizer state by name, trainer state) of a checkpoint written under FSDP or
    DeepSpeed, checked against `model`'s trainable parameters; `engine` names the sharded engine
    that is to take it (a checkpoint by position is refused for it)."""
    weights = _safe(load_file, path / "trainable.safetensors")
    state = _safe(lambda p: json.loads(p.read_text()), path / "state.json")
    if state.get("optimizer_layout") != "names":
        raise CheckpointError(f"checkpoint {path} was written without FSDP or DeepSpeed (optimizer state by position); "
                              f"resume it without {engine} (configs/accelerate/ddp.yaml), on any number of processes")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != trainable:
        raise RuntimeError(f"checkpoint {path} does not match the model: missing {sorted(trainable - set(weights))[:3]}, "
                           f"unexpected {sorted(set(weights) - trainable)[:3]} (was it written with the same model and "
                           "LoRA settings?)")
    return weights, _load_state_dict(path / "optimizer.pt"), state


def finish_named_load(path: Path, scheduler) -> None:
    """The scheduler and RNG states of a checkpoint whose weights and optimizer are loaded."""
    scheduler.load_state_dict(_load_state_dict(path / "scheduler.pt"))
    set_rng_state(_load_rng(path))


def _load_by_name(path: Path, model, optimizer, scheduler) -> dict:
    """A checkpoint whose optimizer state is keyed by parameter name (written under FSDP or
    DeepSpeed), into a sharded or plain model; a sharded model cannot take one keyed by position."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    weights, optimizer_state, state = read_named_checkpoint(path, model)
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), optimizer_state, options=options)
    finish_named_load(path, scheduler)
    return state
