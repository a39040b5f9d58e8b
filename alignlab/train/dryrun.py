"""`--dry-run`: explain a run before running it — batch arithmetic, model copies and memory,
what the data preparation touched, and which settings differ from the defaults."""

from __future__ import annotations

import dataclasses
import math
import os
import textwrap

import torch

from alignlab import config as config_lib

_GB = 1024**3


def _count_params(cfg, model) -> tuple[int, int]:
    """(total, trainable) parameters, from the real model or a weightless one on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from alignlab.models.load import add_lora, resolve_model_path

    if model is None:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model_path(cfg.model)))
    total = sum(p.numel() for p in model.parameters())
    if cfg.lora:
        import copy

        with torch.device("meta"):
            lora = add_lora(copy.deepcopy(model).to("meta"), r=cfg.lora_r, alpha=cfg.lora_alpha,
                            dropout=cfg.lora_dropout, target_modules=cfg.lora_target_modules, layers=cfg.lora_layers)
        trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    else:
        trainable = total
    return total, trainable


def explain(session, model=None) -> str:
    cfg = session.cfg
    world = int(os.environ.get("WORLD_SIZE", "1"))
    n_train = len(session.train_pairs)
    micro = math.ceil(n_train / cfg.batch_size) if n_train else 0
    per_epoch = math.ceil(micro / cfg.grad_accum) if micro else 0
    steps = cfg.max_steps or math.ceil(per_epoch * cfg.epochs)
    total, trainable = _count_params(cfg, model)
    bytes_w = 4  # weights stay fp32 under bf16/fp16 autocast
    weights = total * bytes_w
    optim = trainable * (4 + 8)  # fp32 gradients + two AdamW moments
    reference = getattr(cfg, "reference", "none")
    ref_text = {
        "auto": "precomputed once before training (no second model copy)",
        "precompute": "precomputed once before training (no second model copy)",
        "adapter_disabled": "same model with the LoRA adapter disabled, every step (no second copy)",
        "none": "not used (reference-free loss)",
    }.get(reference, reference)
    lines = [
        f"alignlab dry run: {session.algorithm_name} on {cfg.model}",
        "batch arithmetic:",
        f"  {cfg.batch_size} per device x {cfg.grad_accum} accumulation x {world} process(es) = {cfg.batch_size * cfg.grad_accum * world} examples per optimizer step",
        f"  {n_train} train pairs -> {micro} micro-batches, {per_epoch} steps per epoch, {steps} optimizer steps in all",
        f"  {len(session.eval_pairs)} eval pairs; eval every {cfg.eval_every or 'end only'}; checkpoint every {cfg.save_every or 'end only'}",
        "model copies and memory (estimate, excluding activations):",
        f"  1 policy copy: {total / 1e6:.1f}M parameters, {weights / _GB:.2f} GiB of weights",
        f"  trainable: {trainable / 1e6:.2f}M ({'LoRA r=' + str(cfg.lora_r) if cfg.lora else 'all weights'}), gradients + AdamW state {optim / _GB:.2f} GiB",
        f"  reference policy: {ref_text}",
        f"  total ~{(weights + optim) / _GB:.2f} GiB per process",
        "data preparation:",
        *("  " + line for line in session.report.lines()),
        *settings_lines(cfg),
    ]
    return "\n".join(lines)


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
