"""`--dry-run`: explain a run before running it — batch arithmetic, model copies and memory,
what the data preparation touched, and which settings differ from the defaults."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import textwrap

import torch

from alignlab import config as config_lib
from alignlab.models.load import add_lora, resolve_model_path

_GB = 1024**3


def _count_params(cfg, model) -> tuple[int, int]:
    """(total, trainable) parameters, from the real model or a weightless one on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model is None:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model_path(cfg.model)))
    total = sum(p.numel() for p in model.parameters())
    if cfg.lora:
        with torch.device("meta"):
            lora = add_lora(copy.deepcopy(model).to("meta"), r=cfg.lora_r, alpha=cfg.lora_alpha,
                            dropout=cfg.lora_dropout, target_modules=cfg.lora_target_modules, layers=cfg.lora_layers)
        trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    else:
        trainable = total
    return total, trainable


def launched_processes() -> int:
    """Processes the launcher started (accelerate launch, torchrun set WORLD_SIZE); a dry run reads
    it without joining the process group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def batch_lines(cfg, n_train: int, n_eval: int, unit: str) -> list[str]:
    """Batch arithmetic of an offline trainer: examples per step, steps per epoch and in all."""
    world = launched_processes()
    micro = math.ceil(n_train / cfg.batch_size) if n_train else 0
    per_epoch = math.ceil(micro / (cfg.grad_accum * world)) if micro else 0
    steps = cfg.max_steps or math.ceil(per_epoch * cfg.epochs)
    return [
        "batch arithmetic:",
        f"  {cfg.batch_size} per device x {cfg.grad_accum} accumulation x {world} process(es) = "
        f"{cfg.batch_size * cfg.grad_accum * world} {unit} per optimizer step",
        f"  {n_train} train {unit} -> {micro} micro-batches, {per_epoch} steps per epoch, {steps} optimizer steps in all",
        f"  {n_eval} eval {unit}; eval every {cfg.eval_every or 'end only'}; checkpoint every {cfg.save_every or 'end only'}",
    ]


def policy_lines(cfg, model=None, *, reference: str) -> list[str]:
    """Model copies and memory of a policy trainer (weights fp32, AdamW state, the reference)."""
    total, trainable = _count_params(cfg, model)
    weights = total * 4  # weights stay fp32 under bf16/fp16 autocast
    optim = trainable * (4 + 8)  # fp32 gradients + two AdamW moments
    return [
        "model copies and memory (estimate, excluding activations):",
        f"  1 policy copy: {total / 1e6:.1f}M parameters, {weights / _GB:.2f} GiB of weights",
        f"  trainable: {trainable / 1e6:.2f}M ({'LoRA r=' + str(cfg.lora_r) if cfg.lora else 'all weights'}), "
        f"gradients + AdamW state {optim / _GB:.2f} GiB",
        f"  reference policy: {reference}",
        f"  total ~{(weights + optim) / _GB:.2f} GiB per process",
    ]


def describe(session, unit: str, model_lines: list[str], batch: list[str] | None = None):
    """The one dry run: what the run would do (batch arithmetic, models and memory, the data
    preparation, every effective setting and where it came from). Sets `session.dry_run_text`
    and returns the session; nothing is loaded beyond the tokenizer and nothing is trained."""
    cfg = session.cfg
    if batch is None:
        batch = batch_lines(cfg, len(session.train_examples), len(session.eval_examples), unit)
    lines = [f"alignlab dry run: {session.algorithm_name} on {cfg.model}", *batch, *model_lines]
    if session.report.lines():
        lines += ["data preparation:", *("  " + line for line in session.report.lines())]
    session.dry_run_text = "\n".join(lines + settings_lines(cfg))
    return session


def settings_lines(cfg) -> list[str]:
    """Every effective setting and where it came from: the user (YAML or flags), a context
    default such as the chosen loss's paper value, or the global (dataclass) default."""
    origins = config_lib.sources(cfg)
    defaults = {f.name: getattr(type(cfg)(), f.name) for f in dataclasses.fields(cfg)}
    chosen, rest = [], []
    for f in dataclasses.fields(cfg):
        value, origin = getattr(cfg, f.name), origins.get(f.name, config_lib.DEFAULT)
        if origin == config_lib.DEFAULT:
            rest.append(f"{f.name}={value!r}")
        elif origin == config_lib.USER:
            chosen.append(f"  {f.name}: {value!r}  (user; default {defaults[f.name]!r})")
        else:
            chosen.append(f"  {f.name}: {value!r}  ({origin})")
    lines = ["settings given by you or by the chosen method (value, where it came from):"]
    lines += chosen or ["  (none)"]
    lines += ["global defaults:", *("  " + line for line in textwrap.wrap(", ".join(rest), 96))]
    return lines
