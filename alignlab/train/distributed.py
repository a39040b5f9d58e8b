"""Data parallelism for every trainer: which process this is, which shard of the work is its own,
and the few collectives the run setup and the loop need.

The rule that makes N processes train exactly like one (and a checkpoint written by N resume on
M): the data order is defined by the GLOBAL batch. Every process builds the same full list of
micro-batches (batch_size examples each); an optimizer step consumes grad_accum x world_size of
them, and process r trains on its share of that window (`window_share`). Losses are normalised by
the example count of the whole window, which every process computes from the same list without
communication, and the summed gradients are all-reduced once per step (`all_reduce_gradients`).

One-off work over a list (reference log-probs, critic and reference passes, generation and
reward scoring of prompts) is sharded by `shard_indices` and put back together with
`all_reduce_sum` (each process fills its rows of a zero tensor) or `gather_ragged`.

Nothing here pickles: objects cross processes as tensors or as JSON text in a byte tensor.
Works with a single process (every helper is then the identity) and needs no accelerate
`Accelerator`: the process group comes from the launcher's environment (accelerate launch,
torchrun) through accelerate's `PartialState`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from alignlab.rollout.base import Completions


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def cpu_only() -> bool:
    """Launched on a machine without a GPU: accelerate must be told to use gloo on the CPU (plain
    torchrun does not say so; `accelerate launch --cpu` does). Not under DeepSpeed, which accelerate
    would then drop: DeepSpeed picks its CPU accelerator (gloo) itself."""
    return _launched() and not torch.cuda.is_available() and not _deepspeed()


def _deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def state():
    """accelerate's process state (initialises the process group from the launcher's env once).
    DeepSpeed without a GPU: accelerate picks no backend for it, so gloo is named."""
    from accelerate import PartialState

    if _deepspeed() and _launched() and not torch.cuda.is_available():
        return PartialState(backend="gloo")
    return PartialState(cpu=cpu_only())


def world_size() -> int:
    return state().num_processes if _launched() else 1


def rank() -> int:
    return state().process_index if _launched() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def _device() -> torch.device:
    """Where collective tensors live: the GPU under NCCL, the CPU under gloo."""
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "gloo"
    return state().device if backend == "nccl" else torch.device("cpu")


def shard_indices(n: int) -> list[int]:
    """This process's share of range(n): a contiguous block (blocks differ in size by at most 1),
    so that whole prompt groups stay on one process when n counts prompts."""
    w, r = world_size(), rank()
    start, extra = divmod(n, w)
    lo = r * start + min(r, extra)
    return list(range(lo, lo + start + (1 if r < extra else 0)))


def window_share(window: list) -> list:
    """This process's micro-batches of one optimizer step's window (strided: balanced when the
    last window of an epoch is short; a process may get none, and then only joins the all-reduce)."""
    return window[rank() :: world_size()]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over processes (in place, returned)."""
    if world_size() > 1:
        out = tensor.to(_device())
        torch.distributed.all_reduce(out)
        if out is not tensor:
            tensor.copy_(out.to(tensor.device))
    return tensor


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of `params` over processes in one flat bucket. A parameter without a
    gradient on some process counts as zero there (a process whose share of the window was empty,
    an ensemble member unused by its micro-batches), so the result never depends on which process
    trained on what."""
    w = world_size()
    if w == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads]).to(_device())
    torch.distributed.all_reduce(flat)
    flat /= w
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(g).to(device=p.device, dtype=p.dtype)
        offset += n


def broadcast_parameters(params: list[torch.nn.Parameter]) -> None:
    """Copy the main process's values of `params` to every process (one flat bucket)."""
    if world_size() == 1 or not params:
        return
    flat = torch.cat([p.detach().reshape(-1).float() for p in params]).to(_device())
    torch.distributed.broadcast(flat, 0)
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n


def gather_ragged(rows: list[torch.Tensor], dtype=torch.float32) -> list[torch.Tensor]:
    """Every process's list of 1-D tensors (lengths may differ), concatenated in rank order."""
    if world_size() == 1:
        return [torch.as_tensor(r, dtype=dtype) for r in rows]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    all_lengths = _gather_1d(lengths)
    flat = torch.cat([torch.as_tensor(r, dtype=dtype).reshape(-1) for r in rows]) if rows else torch.zeros(0, dtype=dtype)
    all_flat = _gather_1d(flat)
    out, offset = [], 0
    for n in all_lengths.tolist():
        out.append(all_flat[offset : offset + n])
        offset += n
    return out


def _gather_1d(tensor: torch.Tensor) -> torch.Tensor:
    """1-D tensors of any length from every process, concatenated in rank order."""
    w, device = world_size(), _device()
    size = torch.tensor([tensor.numel()], device=device)
    sizes = [torch.zeros_like(size) for _ in range(w)]
    torch.distributed.all_gather(sizes, size)
    width = int(max(s.item() for s in sizes))
    padded = torch.zeros(width, dtype=tensor.dtype, device=device)
    padded[: tensor.numel()] = tensor.to(device)
    parts = [torch.zeros_like(padded) for _ in range(w)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())].cpu() for p, s in zip(parts, sizes)])


def gather_json(obj: Any) -> list:
    """Every process's JSON-serialisable `obj`, in rank order."""
    if world_size() == 1:
        return [obj]
    data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8)
    lengths = _gather_1d(torch.tensor([data.numel()]))
    flat = _gather_1d(data)
    out, offset = [], 0
    for n in lengths.tolist():
        out.append(json.loads(bytes(flat[offset : offset + n].tolist()).decode()))
        offset += n
    return out


def broadcast_json(obj: Any) -> Any:
    """The main process's JSON-serialisable `obj` on every process."""
    return gather_json(obj if is_main() else None)[0]


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any (a Ctrl-C, a non-finite loss)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def gather_rows(local: torch.Tensor | dict | None) -> torch.Tensor | dict | None:
    """Tensors (k, ...) from every process concatenated along dim 0 in rank order (a dict: each
    entry); a process with nothing to add passes None. Dtypes and trailing shapes come back."""
    if world_size() == 1:
        return local
    single = not isinstance(local, dict)
    parts = {"": local} if single and local is not None else ({} if local is None else dict(local))
    meta = {k: [list(v.shape[1:]), str(v.dtype).removeprefix("torch.")] for k, v in parts.items()}
    found = next((m for m in gather_json(meta if local is not None else None) if m is not None), None)
    if found is None:
        return None
    out = {}
    for key, (tail, dtype) in found.items():
        mine = parts.get(key)
        flat = mine.reshape(-1).double() if mine is not None else torch.zeros(0, dtype=torch.float64)
        out[key] = _gather_1d(flat).to(getattr(torch, dtype)).reshape(-1, *tail)
    return out[""] if single else out


def gather_completions(local: Completions | None, local_prompts: list[int], prompt_ids: list, tokenizer
                       ) -> Completions:
    """Completions of each process's prompts (`local_prompts`: their indices in the full list
    `prompt_ids`; `local` None when it had none) put together in prompt order on every process.
    Texts are decoded from the gathered tokens (with `tokenizer`; None without one)."""
    if world_size() == 1:
        return local
    rows = local.completion_ids if local is not None else []
    ids = gather_ragged([torch.tensor(c, dtype=torch.long) for c in rows], dtype=torch.long)
    greedy = gather_json(local is not None and local.logprobs is None)
    logprobs = None if any(greedy) else gather_ragged(local.logprobs if local is not None else [])
    prompt_index = gather_rows(torch.tensor([local_prompts[i] for i in local.prompt_index], dtype=torch.long)
                               if local is not None else None)
    finished = gather_rows(torch.tensor(local.finished) if local is not None else None)
    n = max(gather_json(local.n if local is not None else 0))
    completion_ids = [c.tolist() for c in ids]
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True) if tokenizer is not None else None
    prompt_index = prompt_index.tolist()
    return Completions(prompt_index=prompt_index, prompt_ids=[prompt_ids[i] for i in prompt_index],
                       completion_ids=completion_ids, texts=texts, logprobs=logprobs, finished=finished.tolist(), n=n)


def unshard(model: torch.nn.Module) -> None:
    """FSDP2: gather the full weights of every sharded module of `model` on every process and keep
    them gathered (no resharding after a forward), so that the main process alone can save the
    model or score with it (a reward model's centering pass). A collective; a no-op unsharded."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_reshard_after_forward(False)
            module.unshard()
