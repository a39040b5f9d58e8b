"""The one training loop. An algorithm supplies micro-batches, a per-example loss and an
evaluation; the loop owns everything else: accelerate, exact gradient accumulation, clipping, the
schedule, NaN guards, checkpoint/resume, logging and the progress bar.

Gradient accumulation is exact: the loss of each micro-batch is the SUM of its per-example losses
divided by the number of examples in the whole accumulation window (counted before the first
backward), so a window of micro-batches gives the gradient of one big batch — including a partial
last window.

Data parallel (accelerate launch / torchrun): every process builds the same list of micro-batches,
a step's window is grad_accum x world_size of them (the global batch), each process trains on its
share (`distributed.window_share`) and the gradients are averaged once per step. The loss scale
above uses the window's global example count, times world_size to undo the average: N processes
take the same steps as one process with N times the accumulation. Sharded models (FSDP,
DeepSpeed) go through accelerate's `prepare`, which then owns the gradient reduction.
"""


from __future__ import annotations

import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from alignlab.train import distributed as dist
from alignlab.train import zero
from alignlab.train.checkpoint import (finish_named_load, gathered_state, list_checkpoints, load_checkpoint,
                                       read_named_checkpoint, rng_state, save_checkpoint, set_rng_state)
from alignlab.train.config import TrainConfig
from alignlab.train.tracking import Tracker


class TrainingAborted(RuntimeError):
    """Raised for a non-finite loss or too many non-finite gradients; checkpoints are kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the run at a step boundary after saving `checkpoint`."""

    def __init__(self, step: int, checkpoint: Path, run_dir: Path):
        super().__init__(f"interrupted at step {step}; checkpoint saved to {checkpoint}")
        self.step, self.checkpoint, self.run_dir = step, checkpoint, run_dir


class _StopRequest:
    """SIGINT handler for the life of the loop: the first Ctrl-C asks the loop to stop at the next
    step boundary; a second one stops at once (KeyboardInterrupt), and the loop then saves the
    last completed step."""

    def __init__(self):
        self.requested, self.previous = False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self.previous = signal.signal(signal.SIGINT, self)
        return self

    def __call__(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nalignlab: stopping after this step to save a checkpoint (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


class Algorithm(Protocol):
    progress_keys: tuple[str, ...]

    def micro_batches(self, epoch: int) -> list[Any]: ...

    def examples_in(self, batch: Any) -> int: ...

    def loss(self, scorer: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-example losses (n,) and metrics (batch means of scalars). An algorithm may also
        define `parts(batch) -> P`: the loop then calls `loss(scorer, batch, part=j)` for j < P and
        back-propagates each part before computing the next (the parts' losses and metrics add up
        to the batch's), so that one part's activations are held at a time."""

    def evaluate(self, scorer: torch.nn.Module) -> dict[str, float]: ...

    # optional: `before_optimizer_step(state)` runs once per step after the gradients are reduced
    # and clipped and before the optimizer steps (EGPO puts the look-ahead's start weights back)


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    micro: int = 0
    examples_seen: int = 0
    bad_in_row: int = 0
    skipped_steps: int = 0
    train_seconds: float = 0.0
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "history"}


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    kwargs = dict(lr=cfg.learning_rate, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
    groups = params
    head_lr = getattr(cfg, "head_learning_rate", 0.0)
    if head_lr:  # a fresh head learning at its own rate (the scheduler scales both)
        if not callable(getattr(model, "head_parameters", None)):
            raise ValueError(f"head_learning_rate is set but {type(model).__name__} has no head_parameters() "
                             "to apply it to (only reward models have a fresh head)")
        head = {id(p) for p in model.head_parameters()}
        groups = [{"params": [p for p in params if id(p) not in head]},
                  {"params": [p for p in params if id(p) in head], "lr": head_lr}]
        groups = [g for g in groups if g["params"]]
    try:  # fused AdamW: 0.16 s vs 0.40 s per step for the foreach one on CPU
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, **kwargs)


def build_scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    warmup = int(round(cfg.warmup_ratio * total_steps))
    if cfg.lr_schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    make = get_cosine_schedule_with_warmup if cfg.lr_schedule == "cosine" else get_linear_schedule_with_warmup
    return make(optimizer, warmup, total_steps)


def count_steps(cfg: TrainConfig, micro_batches_per_epoch: int, world_size: int = 1) -> int:
    """Optimizer steps of the run: a step consumes grad_accum x world_size micro-batches."""
    if micro_batches_per_epoch == 0:
        raise ValueError("no training examples left after loading and filtering the data")
    per_epoch = math.ceil(micro_batches_per_epoch / (cfg.grad_accum * world_size))
    return cfg.max_steps or max(1, math.ceil(per_epoch * cfg.epochs))


def _resume_path(cfg: TrainConfig, run_dir: Path) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume == "latest":
        found = list_checkpoints(run_dir / "checkpoints")
        if not found:
            raise FileNotFoundError(f"--resume latest: no checkpoint under {run_dir / 'checkpoints'}")
        return found[-1]
    path = Path(cfg.resume)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"--resume {path}: not a checkpoint folder (no state.json)")
    return path


def _weighted_add(totals: dict, metrics: dict, weight: int) -> None:
    for k, v in metrics.items():
        totals[k] = totals.get(k, 0.0) + float(v) * weight  # plain floats: they cross processes as JSON


def train_loop(cfg: TrainConfig, algorithm: Algorithm, model, scorer, accelerator, run_dir: Path) -> LoopState:
    """Run optimizer steps until `max_steps` or the epochs are done. `model` owns the trainable
    parameters; `scorer` is the module whose forward the algorithm calls (it wraps `model`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # an algorithm whose epochs vary in size (online DPO drops tied pairs) plans on its nominal size
    planned = getattr(algorithm, "planned_micro_batches", None)
    total_steps = count_steps(cfg, planned() if planned is not None else len(algorithm.micro_batches(0)),
                              dist.world_size())
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, total_steps)
    resume_from = _resume_path(cfg, run_dir)
    deepspeed = zero.is_deepspeed(accelerator)
    if deepspeed and resume_from is not None:  # the weights go in before DeepSpeed takes (and shards) them
        weights, optimizer_state, saved = read_named_checkpoint(resume_from, model, engine="DeepSpeed")
        zero.load_weights(model, weights)
    if sharded_model(accelerator):  # FSDP / DeepSpeed own the parameters and their reduction
        scorer, optimizer = accelerator.prepare(scorer, optimizer)
    else:  # plain data parallel: one all-reduce per step (any number of forwards, parts, unused params)
        optimizer = accelerator.prepare(optimizer)
    scorer.train()  # from_pretrained returns models in eval mode: dropout and gradient checkpointing need train mode
    params = [p for p in model.parameters() if p.requires_grad]
    state = LoopState()
    if resume_from is not None:
        if deepspeed:
            zero.load_optimizer(model, optimizer, optimizer_state)
            finish_named_load(resume_from, scheduler)
        else:
            saved = load_checkpoint(resume_from, model, optimizer, scheduler, sharded=sharded_model(accelerator))
        state = LoopState(**{k: v for k, v in saved.items() if k in LoopState.__dataclass_fields__})
        accelerator.print(f"alignlab: resumed from {resume_from} at step {state.step}")
    if not sharded_model(accelerator):
        dist.broadcast_parameters(params)  # every process starts from the main process's weights
    tracker = Tracker(run_dir, cfg.report_to, {}, resume_step=state.step if resume_from else None) \
        if dist.is_main() else _NoTracker()
    bar = tqdm(total=total_steps, initial=state.step, disable=not cfg.progress or not dist.is_main(), desc="train",
               dynamic_ncols=True)
    try:
        with _StopRequest() as stop:
            # max_steps wins over epochs (the data repeats); otherwise stop after the epochs, even where
            # an epoch came out smaller than planned (online DPO drops tied pairs)
            while state.step < total_steps and (cfg.max_steps or state.epoch < math.ceil(cfg.epochs)):
                # what a checkpoint of this step boundary holds, should a KeyboardInterrupt cut the
                # next step short: that step's RNG draws are undone (its optimizer step never ran)
                boundary = (rng_state(), state.step, state.epoch, state.micro)
                try:
                    if dist.any_process(stop.requested):  # every process stops at the same step boundary
                        raise KeyboardInterrupt
                    batches = algorithm.micro_batches(state.epoch)
                    if state.micro >= len(batches):
                        state.epoch, state.micro = state.epoch + 1, 0
                        continue
                    _one_step(cfg, algorithm, scorer, params, optimizer, scheduler, accelerator, batches, state,
                              tracker, bar)
                except KeyboardInterrupt:
                    _interrupted(cfg, run_dir, model, optimizer, scheduler, state, accelerator, boundary)
                if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < total_steps:
                    _evaluate(algorithm, scorer, state, tracker)
                if cfg.save_every and state.step % cfg.save_every == 0 and state.step < total_steps:
                    _save(cfg, run_dir, model, optimizer, scheduler, state, accelerator)
        _evaluate(algorithm, scorer, state, tracker)
        _save(cfg, run_dir, model, optimizer, scheduler, state, accelerator)
        if deepspeed:  # the whole weights back into the model for the final save, before the engine is released
            zero.unshard(model)
    finally:
        bar.close()
        tracker.close()
        # accelerate keeps the prepared optimizer alive; release its state (2x the trainable weights
        # for AdamW) before the caller saves the final model, which would otherwise be the peak
        del optimizer, scheduler
        accelerator.free_memory()
    return state


def _one_step(cfg, algorithm, scorer, params, optimizer, scheduler, accelerator, batches, state, tracker, bar):
    start = time.perf_counter()
    world = dist.world_size()
    window = batches[state.micro : state.micro + cfg.grad_accum * world]  # the global batch
    # 0 only when every example of the window was masked out (e.g. online overlong filtering): the
    # losses are then all 0 and so is the gradient
    n_total = sum(algorithm.examples_in(b) for b in window) or 1
    totals: dict[str, float] = {}
    loss_sum, bad = 0.0, None
    share = dist.window_share(window)
    weights = [1.0] * len(share)
    if sharded_model(accelerator):  # FSDP/DeepSpeed: every process runs as many forwards (zero-weight repeats)
        pad = -(-len(window) // world) - len(share)
        share, weights = share + [window[0]] * pad, weights + [0.0] * pad
    first = state.micro + dist.rank()  # the global index of this process's first micro-batch
    deepspeed = zero.is_deepspeed(accelerator)
    for i, (batch, weight) in enumerate(zip(share, weights)):
        parts = algorithm.parts(batch) if hasattr(algorithm, "parts") else 1
        for j in range(parts):
            sync = i == len(share) - 1 and j == parts - 1
            with accelerator.no_sync(scorer) if not (sync or deepspeed) else _nullcontext(), accelerator.autocast():
                per_example, metrics = algorithm.loss(scorer, batch) if parts == 1 else algorithm.loss(scorer, batch, part=j)
            if bad is None and weight and not torch.isfinite(per_example).all():
                bad = f"micro-batch {first + i * world}"  # reported by every process below; nobody steps
            # x world: the all-reduce averages over processes, the loss is a sum over the global window
            scaled = per_example.sum() * (weight * world / n_total)
            if deepspeed:  # the engine reduces the gradients at the window's last backward
                zero.backward(accelerator, scaled, last=sync)
            else:
                accelerator.backward(scaled)
            if weight:
                loss_sum += float(per_example.detach().sum())
                _weighted_add(totals, metrics, algorithm.examples_in(batch))
    loss_sum, totals, bad = _reduce_step(loss_sum, totals, bad)
    if bad is not None:
        raise TrainingAborted(
            f"non-finite loss at step {state.step + 1} (epoch {state.epoch}, {bad});"
            " stopping. The last good checkpoint is kept; lower the learning rate or check the data."
        )
    if not sharded_model(accelerator):
        dist.all_reduce_gradients(params)
    if deepspeed:  # the engine clips (gradient_clipping = max_grad_norm) and steps; it cannot skip a step
        grad_norm = zero.step(accelerator)
        if not math.isfinite(grad_norm):
            raise TrainingAborted(f"non-finite gradients at step {state.step + 1} under DeepSpeed (which does not skip "
                                  "a step); stopping. The last good checkpoint is kept.")
    else:
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = float(accelerator.clip_grad_norm_(params, max_norm))
        if math.isfinite(grad_norm):
            before = getattr(algorithm, "before_optimizer_step", None)  # e.g. EGPO's extragradient full step
            if before is not None:
                before(state)
            optimizer.step()
            state.bad_in_row = 0
        else:  # a loss can look finite while its gradients are not: skip the step, count it
            state.bad_in_row += 1
            state.skipped_steps += 1
            if state.bad_in_row >= cfg.max_bad_steps:
                raise TrainingAborted(
                    f"{state.bad_in_row} optimizer steps in a row had non-finite gradients (last at step"
                    f" {state.step + 1}); stopping. The last good checkpoint is kept."
                )
    scheduler.step()  # stays in step with the step counter even when a step is skipped
    optimizer.zero_grad(set_to_none=True)
    state.micro += len(window)
    state.step += 1
    state.examples_seen += n_total
    state.train_seconds += time.perf_counter() - start
    row = {"step": state.step, "loss": loss_sum / n_total, **{k: v / n_total for k, v in totals.items()}}
    # the counter is in the algorithm's unit of examples_in (an online method counts tokens, sequences or pairs)
    unit = getattr(algorithm, "unit_name", "examples")
    row.update(grad_norm=grad_norm, lr=scheduler.get_last_lr()[0], epoch=state.epoch)
    row[f"{unit}_seen"] = state.examples_seen
    row[f"{unit}_per_second"] = state.examples_seen / max(state.train_seconds, 1e-9)
    row["step_seconds"] = time.perf_counter() - start
    step_metrics = getattr(algorithm, "step_metrics", None)  # e.g. an online method's rollout statistics
    if step_metrics is not None:
        row.update(step_metrics())
    state.history.append(row)
    if state.step % cfg.log_every == 0:
        tracker.log(state.step, {k: v for k, v in row.items() if k != "step"})
    bar.update(1)
    bar.set_postfix({k: f"{row[k]:.3g}" for k in ("loss", *algorithm.progress_keys) if k in row})


def sharded_model(accelerator) -> bool:
    """Whether accelerate shards the model (FSDP, DeepSpeed, Megatron): it must then wrap it."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                                            DistributedType.MEGATRON_LM)


def _reduce_step(loss_sum: float, totals: dict, bad: str | None):
    """Sum a step's loss and metric totals over processes; the first process's non-finite report."""
    if dist.world_size() == 1:
        return loss_sum, totals, bad
    merged_loss, merged, first_bad = 0.0, {}, None
    for r_loss, r_totals, r_bad in dist.gather_json([loss_sum, totals, bad]):
        merged_loss += r_loss
        for k, v in r_totals.items():
            merged[k] = merged.get(k, 0.0) + v
        first_bad = first_bad or r_bad
    return merged_loss, merged, first_bad


class _NoTracker:
    """The metrics sink of a process other than the main one: logging happens once."""

    def log(self, step, metrics) -> None:
        pass

    def close(self) -> None:
        pass


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _evaluate(algorithm, scorer, state: LoopState, tracker: Tracker) -> None:
    was_training = scorer.training
    scorer.eval()
    with torch.no_grad():
        metrics = algorithm.evaluate(scorer)
    scorer.train(was_training)
    if metrics:
        tracker.log(state.step, {f"eval/{k}": v for k, v in metrics.items()})
        state.history.append({"step": state.step, **{f"eval/{k}": v for k, v in metrics.items()}})


def _interrupted(cfg, run_dir, model, optimizer, scheduler, state, accelerator, boundary):
    """Save the checkpoint of the last completed step and raise TrainingInterrupted."""
    rng, step, epoch, micro = boundary
    if state.step != step:  # interrupted between the optimizer step and the loop's bookkeeping: keep it
        rng = rng_state()
    state.epoch, state.micro = (epoch, micro) if state.step == step else (state.epoch, state.micro)
    optimizer.zero_grad(set_to_none=True)
    set_rng_state(rng)
    _save(cfg, run_dir, model, optimizer, scheduler, state, accelerator)
    raise TrainingInterrupted(state.step, run_dir / "checkpoints" / f"step-{state.step}", run_dir) from None


def _save(cfg, run_dir, model, optimizer, scheduler, state, accelerator) -> None:
    # a sharded model is gathered whole first, by every process
    if zero.is_deepspeed(accelerator):
        gathered = zero.gathered_state(model, optimizer)
    else:
        gathered = gathered_state(model, optimizer) if sharded_model(accelerator) else None
    if accelerator.is_main_process:
        save_checkpoint(run_dir / "checkpoints", state.step, model, optimizer, scheduler, state.to_dict(),
                        cfg.keep_checkpoints, gathered=gathered)
    accelerator.wait_for_everyone()
