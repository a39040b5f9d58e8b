"""One rollout iteration's data as tensors, and its micro-batches for the one loop.

Token tensors are (B, T): B = prompts x n completions (prompt-major, the rollout protocol's order),
T = the longest completion, left-aligned, `mask` 1 on real tokens. A micro-batch packs whole
prompt groups into one forward (`pack_sequences`: the prompt is computed once for its n
completions) and carries the (row, column) of every scored token, so the packed per-token outputs
land back in (b, T) layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from alignlab.models.packing import PackedBatch, pack_sequences


def pad_tokens(rows: list, width: int | None = None, value: float = 0.0, dtype=torch.float32) -> Tensor:
    """Left-aligned (B, T) tensor from B variable-length lists/tensors."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(r, dtype=dtype)
    return out


@dataclass
class RolloutBatch:
    """Everything one iteration produced; saved in the run folder so that a resumed run continues
    on exactly the same samples (`save`/`load`)."""

    iteration: int
    n: int
    prompts: list
    """Each row's prompt (text or messages), as the reward sources see it."""
    prompt_ids: list
    """Each row's prompt tokens."""
    completion_ids: list
    texts: list
    finished: list
    mask: Tensor  # (B, T)
    old_logps: Tensor  # (B, T): the sampling policy's log-probs at the sampling temperature
    rewards: Tensor  # (B,): the shaped reward the advantages were computed from; online DPO: each kept
    # row's preference target P(row ≻ its pair's other row), 0 or 1 with hard labels
    advantages: Tensor | None = None  # (B, T)
    returns: Tensor | None = None  # (B, T, C): value targets per critic
    ref_logps: Tensor | None = None  # (B, T)
    old_values: Tensor | None = None  # (B, T, C)
    costs: Tensor | None = None  # (B,)
    keep: Tensor | None = None  # (B,) bool: rows that are trained on (PF-PPO filtration; online DPO's pairs)
    from_reference: Tensor | None = None  # (B,) bool: rows sampled from the reference (XPO / VPO exploration)
    judged: Tensor | None = None  # (B,) online DPO: the judge's P(row ≻ its pair's other row), kept rows
    population_logps: Tensor | None = None  # (B, T) MNPO: the mean log-probs of its past iterates
    anchor_logps: Tensor | None = None  # (B, T) Nash-MP: the log-probs of the proximal anchor pi_k
    baseline: Tensor | None = None  # (P,) ReMax: each prompt's greedy reward, shaped as the samples' rewards
    metrics: dict = field(default_factory=dict)
    controller: dict = field(default_factory=dict)
    """Controller state after this iteration (kl_coef, Lagrange multiplier), restored on resume."""

    def __len__(self) -> int:
        return len(self.completion_ids)

    def save(self, path: Path) -> None:
        """Tensors as safetensors, everything else as JSON in its metadata: one file, never a pickle."""
        tensors = {k: v.contiguous() for k, v in self.__dict__.items() if isinstance(v, Tensor)}
        rest = {k: v for k, v in self.__dict__.items() if not isinstance(v, Tensor) and v is not None}
        tmp = path.with_suffix(".tmp")
        save_file(tensors, tmp, metadata={"rollout": json.dumps(rest, default=float)})
        tmp.replace(path)  # atomic: a crash mid-write never leaves a half file

    @classmethod
    def load(cls, path: Path) -> RolloutBatch:
        try:
            with safe_open(str(path), framework="pt") as f:
                fields = {k: f.get_tensor(k) for k in f.keys()}
                fields.update(json.loads((f.metadata() or {})["rollout"]))
            return cls(**fields)
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"rollout file {path} cannot be read safely and was not loaded ({str(exc)[:200]}); "
                             "it was not written by alignlab or is corrupt") from None


def rollout_path(directory: Path, iteration: int) -> Path:
    """Where iteration `iteration`'s rollout is kept in the run folder."""
    return directory / f"iter-{iteration:05d}.safetensors"


def rollout_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("iter-*.safetensors"))


def write_judged_pairs(batch: RolloutBatch, path: Path) -> int:
    """Online DPO's labelled pairs of one iteration, one JSON line each (`prompt`, `chosen`,
    `rejected`, `preference` = P(chosen ≻ rejected), `iteration`, and `chosen_from_reference` /
    `rejected_from_reference` with exploration): pairwise records that `load_records` and
    `alignlab train dpo` read. Tied pairs were dropped before and are not written. Atomic."""
    kept = batch.keep.nonzero()[:, 0].tolist() if batch.keep is not None else []
    rows = []
    for a, b in zip(kept[0::2], kept[1::2]):
        p = float(batch.judged[a])
        chosen, rejected = (a, b) if p > 0.5 else (b, a)
        row = {"prompt": batch.prompts[a], "chosen": batch.texts[chosen], "rejected": batch.texts[rejected],
               "preference": max(p, 1 - p), "iteration": batch.iteration}
        if batch.from_reference is not None:
            row["chosen_from_reference"] = bool(batch.from_reference[chosen])
            row["rejected_from_reference"] = bool(batch.from_reference[rejected])
        rows.append(row)
    _write_jsonl(rows, path)
    return len(rows)


def _write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def write_selections(batch: RolloutBatch, path: Path) -> int:
    """The samples `batch.keep` selected, one JSON line each (`prompt`, `response`, `reward`,
    `iteration`): a demonstrations file that `alignlab train sft` and `ptx_data` read. Written
    atomically; returns the number of lines."""
    keep = batch.keep if batch.keep is not None else torch.ones(len(batch), dtype=torch.bool)
    rows = [{"prompt": batch.prompts[i], "response": batch.texts[i], "reward": float(batch.rewards[i]),
             "iteration": batch.iteration} for i in keep.nonzero()[:, 0].tolist()]
    _write_jsonl(rows, path)
    return len(rows)


@dataclass
class OnlineMicroBatch:
    rows: Tensor  # (b,) rows of the RolloutBatch
    packed: PackedBatch
    token_row: Tensor  # (N,) local row of each scored token
    token_col: Tensor  # (N,) its column in (b, T)
    mask: Tensor  # (b, T)
    old_logps: Tensor
    advantages: Tensor | None
    returns: Tensor | None
    ref_logps: Tensor | None
    old_values: Tensor | None
    rewards: Tensor  # (b,)
    entropy: bool = False
    """Compute entropies on this micro-batch (first pass over a rollout only)."""
    ptx: PackedBatch | None = None
    """Demonstrations for the pretraining/SFT mixing term (online_ptx), when it is on."""
    from_reference: Tensor | None = None
    """(b,) bool: rows sampled from the reference (online DPO's XPO / VPO exploration)."""
    population_logps: Tensor | None = None
    """(b, T) MNPO: the mean log-probs of the population of past iterates."""
    anchor_logps: Tensor | None = None
    """(b, T) Nash-MP: the log-probs of the proximal anchor pi_k."""

    def to_bt(self, flat: Tensor) -> Tensor:
        """Packed per-token values (N, ...) -> (b, T, ...) zero-padded."""
        out = flat.new_zeros((self.mask.shape[0], self.mask.shape[1], *flat.shape[1:]))
        out[self.token_row, self.token_col] = flat
        return out


def _token_index(packed: PackedBatch) -> tuple[Tensor, Tensor]:
    """(row, col) of each scored token: a sequence's tokens are contiguous and in order."""
    seq = packed.score_sequence
    N = seq.numel()
    if N == 0:
        return seq, seq
    starts = torch.zeros(packed.num_sequences, dtype=torch.long)
    first = torch.ones(N, dtype=torch.bool)
    first[1:] = seq[1:] != seq[:-1]
    starts[seq[first]] = torch.arange(N)[first]
    return seq, torch.arange(N) - starts[seq]


def make_micro_batch(batch: RolloutBatch, rows: list[int], pad_token_id: int, *, entropy: bool = False) -> OnlineMicroBatch:
    """Pack `rows` (grouped by prompt: rows sharing a prompt form one block) into one forward."""
    blocks: dict[int, tuple[list, list]] = {}
    for local, r in enumerate(rows):
        key = r // batch.n  # the rows of one prompt group share its prompt
        blocks.setdefault(key, (batch.prompt_ids[r], []))[1].append((batch.completion_ids[r], local))
    packed = pack_sequences(list(blocks.values()), len(rows), pad_token_id=pad_token_id)
    token_row, token_col = _token_index(packed)
    idx = torch.tensor(rows)

    def pick(t):
        return None if t is None else t[idx]

    return OnlineMicroBatch(idx, packed, token_row, token_col, batch.mask[idx], batch.old_logps[idx],
                            pick(batch.advantages), pick(batch.returns), pick(batch.ref_logps), pick(batch.old_values),
                            batch.rewards[idx], entropy, from_reference=pick(batch.from_reference),
                            population_logps=pick(batch.population_logps), anchor_logps=pick(batch.anchor_logps))


def micro_batch_rows(batch: RolloutBatch, *, batch_size: int, epochs: int, seed: int, pairs: bool = False
                     ) -> list[list[int]]:
    """Row lists of every micro-batch: `epochs` passes, each a fresh shuffle of the prompt groups
    (whole groups stay together: their prompt is computed once), filtered rows left out. With
    `pairs` (P3O) a micro-batch holds whole consecutive pairs."""
    keep = batch.keep if batch.keep is not None else torch.ones(len(batch), dtype=torch.bool)
    groups = [[r for r in range(g * batch.n, (g + 1) * batch.n) if keep[r]] for g in range(len(batch) // batch.n)]
    groups = [g for g in groups if g]
    out = []
    for epoch in range(epochs):
        order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed + 7919 * epoch)).tolist()
        rows = [r for g in order for r in groups[g]]
        step = batch_size + (batch_size % 2 if pairs else 0)
        out.extend(rows[i : i + step] for i in range(0, len(rows), step))
    return out
