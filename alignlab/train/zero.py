"""DeepSpeed ZeRO under alignlab's one loop (accelerate launch with a DeepSpeed config).

alignlab keeps its own settings in charge and hands DeepSpeed only what it must own:

- `deepspeed_settings` fills the DeepSpeed config's "auto" (or missing) entries from alignlab's
  settings (micro-batch size, gradient accumulation, clipping, batch size) and refuses, in one
  line, a config that says something else, or that brings its own optimizer, scheduler or fp16
  loss scaling: alignlab builds the AdamW optimizer and the learning-rate schedule itself (the
  schedule sets the learning rate of the optimizer DeepSpeed wraps, so one schedule drives both).
- The loop drives the engine (`backward`, `step`): the loss scale is alignlab's (exact over the
  global window), DeepSpeed clips by `gradient_clipping` and steps once per window.
- `gathered_state` / `load_state`: checkpoints hold the whole fp32 trainable weights and the
  AdamW state by parameter name (the layout FSDP checkpoints use), so a DeepSpeed checkpoint
  resumes under DeepSpeed (ZeRO-2 or 3) or without it, and an FSDP checkpoint resumes under
  DeepSpeed.
- `unshard`: after training, every process puts the whole fp32 weights back into the model
  (ZeRO-3 partitions them) so that the main process saves the final model as usual.

deepspeed is imported only here and only under a DeepSpeed config; it is never a dependency.
"""

from __future__ import annotations

from typing import Any

import torch

# AdamW's per-parameter state kept by the optimizer DeepSpeed wraps
_ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def _auto(value) -> bool:
    return value is None or value == "auto"


def deepspeed_settings(cfg, ds: dict, world: int) -> dict:
    """`ds` (a DeepSpeed config dict) with its "auto" entries filled from `cfg`; raises ValueError
    (one line) where it disagrees with alignlab's settings. Mutates and returns `ds`."""
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise ValueError(f"DeepSpeed config: remove its '{section}' section; alignlab builds the AdamW optimizer "
                             "and the learning-rate schedule from its own settings (learning_rate, lr_schedule, "
                             "warmup_ratio)")
    if (ds.get("fp16") or {}).get("enabled") is True:
        raise ValueError("DeepSpeed config: fp16 is enabled; alignlab trains under DeepSpeed in fp32 or bf16 "
                         "(precision: bf16), without DeepSpeed's fp16 loss scaling")
    bf16 = (ds.get("bf16") or {}).get("enabled")
    if bf16 not in (None, "auto") and bool(bf16) != (cfg.precision == "bf16"):
        raise ValueError(f"DeepSpeed config: bf16.enabled is {bf16} but alignlab's precision is {cfg.precision}; "
                         "set one to match")
    if cfg.precision == "fp16":
        raise ValueError("precision fp16 is not supported under DeepSpeed; use bf16 or fp32")
    wanted = {
        "train_micro_batch_size_per_gpu": (cfg.batch_size, "batch_size"),
        "gradient_accumulation_steps": (cfg.grad_accum, "grad_accum"),
        "gradient_clipping": (float(cfg.max_grad_norm), "max_grad_norm"),
        "train_batch_size": (cfg.batch_size * cfg.grad_accum * world, f"batch_size x grad_accum x {world} process(es)"),
    }
    for key, (value, name) in wanted.items():
        given = ds.get(key)
        if _auto(given):
            ds[key] = value
        elif float(given) != float(value):
            raise ValueError(f"DeepSpeed config: {key} is {given} but alignlab's {name} is {value}; set the DeepSpeed "
                             f"entry to auto (or {value}), or change alignlab's setting")
    stage = (ds.get("zero_optimization") or {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"DeepSpeed config: zero_optimization.stage {stage} is not 0, 1, 2 or 3")
    return ds


def engine(accelerator):
    """The DeepSpeed engine accelerate's prepare built."""
    return accelerator.deepspeed_engine_wrapped.engine


def backward(accelerator, loss: torch.Tensor, last: bool) -> None:
    """One backward through the engine: gradients accumulate (alignlab scales the loss itself, exact
    over the global window) and are reduced over processes at the window's `last` backward."""
    eng = engine(accelerator)
    eng.set_gradient_accumulation_boundary(is_boundary=last)
    eng.backward(loss, scale_wrt_gas=False)


def step(accelerator) -> float:
    """The engine's optimizer step (clipping by the config's gradient_clipping, zeroing the
    gradients); returns the gradient norm before clipping."""
    eng = engine(accelerator)
    eng.step()
    norm = eng.get_global_grad_norm()
    return float(norm) if norm is not None else float("nan")


def _full(param) -> torch.Tensor | None:
    from deepspeed.utils import safe_get_full_fp32_param

    value = safe_get_full_fp32_param(param)  # a collective: every process calls it
    return None if value is None else value.detach().float().cpu()


def gathered_state(model, optimizer) -> tuple[dict, dict]:
    """(trainable fp32 weights, AdamW state by parameter name), whole on every process, in the
    layout of torch's full optimizer state dict (what FSDP checkpoints hold). A collective."""
    from deepspeed.utils import safe_get_full_optimizer_state

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    weights, state = {}, {}
    step_count = _step_count(optimizer)
    for name, p in named:
        weights[name] = _full(p)
        state[name] = {"step": torch.tensor(float(step_count))}
        for key in _ADAM_KEYS:
            value = safe_get_full_optimizer_state(p, key)
            state[name][key] = value.detach().float().cpu() if value is not None else torch.zeros_like(weights[name])
    base = _base_optimizer(optimizer)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in base.param_groups]
    groups = [{**groups[0], "params": [n for n, _ in named]}] if len(groups) == 1 else _named_groups(model, groups)
    return weights, {"state": state, "param_groups": groups}


def _named_groups(model, groups: list[dict]) -> list[dict]:
    """Several parameter groups (a reward model's head at its own rate): the backbone first, the
    head second, as `build_optimizer` made them."""
    head = {id(p) for p in model.head_parameters()} if callable(getattr(model, "head_parameters", None)) else set()
    names = [[n for n, p in model.named_parameters() if p.requires_grad and id(p) not in head],
             [n for n, p in model.named_parameters() if p.requires_grad and id(p) in head]]
    return [{**g, "params": ns} for g, ns in zip(groups, [ns for ns in names if ns])]


def _base_optimizer(optimizer):
    """The torch optimizer under accelerate's and DeepSpeed's wrappers."""
    opt = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper -> DeepSpeed's ZeRO optimizer
    return getattr(opt, "optimizer", opt)  # -> the torch AdamW over the flat partitions


def _step_count(optimizer) -> int:
    for s in _base_optimizer(optimizer).state.values():
        if "step" in s:
            return int(float(s["step"]))
    return 0


def load_weights(model, weights: dict) -> None:
    """Checkpoint weights into the model before accelerate's prepare hands it to DeepSpeed (which
    then starts its fp32 master copy and shards from them). A model already partitioned at load
    (ZeRO-3's zero3_init_flag) is gathered for it. Every process calls it."""
    import deepspeed

    params = dict(model.named_parameters())
    with deepspeed.zero.GatheredParameters([params[n] for n in weights], modifier_rank=0), torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def load_optimizer(model, optimizer, saved: dict) -> None:
    """AdamW state by parameter name (torch's full optimizer state dict layout) into the optimizer
    DeepSpeed shards; each process keeps its partition. The step count and learning rates too."""
    from deepspeed.utils import safe_set_full_optimizer_state

    state = saved.get("state", {})
    step_count = None
    _init_adam_state(optimizer)
    for name, p in model.named_parameters():
        if not p.requires_grad or name not in state:
            continue
        for key in _ADAM_KEYS:
            if key in state[name]:
                safe_set_full_optimizer_state(p, state[name][key].float(), key)
        step_count = state[name].get("step", step_count)
    base = _base_optimizer(optimizer)
    if step_count is not None:
        for s in base.state.values():
            if "step" in s:
                s["step"] = torch.as_tensor(step_count, dtype=s["step"].dtype) if torch.is_tensor(s["step"]) \
                    else type(s["step"])(float(step_count))
    for group, saved_group in zip(base.param_groups, saved.get("param_groups", [])):
        for key in ("lr", "initial_lr"):
            if key in saved_group:
                group[key] = saved_group[key]


def _init_adam_state(optimizer) -> None:
    """Zero AdamW state for the partitions that have none yet (ZeRO-3 creates it at the first
    step), as torch's AdamW would create it, so that a checkpoint's state can be written into it."""
    base = _base_optimizer(optimizer)
    zero_optimizer = getattr(optimizer, "optimizer", optimizer)
    # ZeRO-3 puts its fp32 partitions into the torch optimizer's groups only during its step
    partitions = [p for g in base.param_groups for p in g["params"]]
    partitions += list(getattr(zero_optimizer, "fp32_partitioned_groups_flat", []))
    on_device = base.param_groups[0].get("fused") or base.param_groups[0].get("capturable")
    for p in partitions:
        if not base.state.get(p):
            base.state[p] = {"step": torch.tensor(0.0, dtype=torch.float32, device=p.device if on_device else "cpu"),
                             **{key: torch.zeros_like(p, memory_format=torch.preserve_format) for key in _ADAM_KEYS}}


def unshard(model) -> None:
    """Every process: the whole weights back into `model` (fp32 master values for the trainable
    ones), so that the main process alone can save it. A collective; the engine is done after it."""
    import deepspeed

    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params):  # ZeRO-3 partitions; a no-op otherwise
        whole = [p.detach().clone() for p in params]
    for p, value in zip(params, whole):
        full = _full(p) if p.requires_grad else None
        p.data = full.to(value.device) if full is not None else value


def describe(ds: dict) -> dict[str, Any]:
    """The DeepSpeed settings worth a line in the run header."""
    zero = ds.get("zero_optimization") or {}
    return {"zero_stage": zero.get("stage", 0), "gradient_accumulation_steps": ds.get("gradient_accumulation_steps"),
            "gradient_clipping": ds.get("gradient_clipping"),
            "train_micro_batch_size_per_gpu": ds.get("train_micro_batch_size_per_gpu")}


def is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED
