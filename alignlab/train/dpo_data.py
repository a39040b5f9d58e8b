"""The DPO family's data: pairwise records loaded and tokenized, and the reference policy's
log-probs of every pair, computed once and cached in the run folder."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from alignlab.data import DataReport, encode_pairs
from alignlab.data.records import PairwiseRecord
from alignlab.train import distributed as dist
from alignlab.train.session import load_split


def pairwise_records(cfg, path: str, records, run_dir: Path, name: str, report: DataReport) -> list:
    """The split's records, all pairwise (rankings and ratings arrive converted to pairs)."""
    records = load_split(cfg, path, records, run_dir, name, report)
    bad = [type(r).__name__ for r in records if not isinstance(r, PairwiseRecord)]
    if bad:
        raise ValueError(
            f"{path or name}: this trainer needs pairwise preferences, got {len(bad)} {bad[0]} records "
            "(rankings and ratings convert to pairs automatically; binary thumbs-up/down feedback trains a policy "
            "with `alignlab train kto` or a reward model with `alignlab train rm --objective binary`)"
        )
    return records


def encode_split(cfg, tokenizer, records: list, source: str, report: DataReport) -> list:
    """Tokenized pairs under cfg's length and truncation settings (cuts and drops in `report`)."""
    pairs, encode_report = encode_pairs(tokenizer, records, max_length=cfg.max_length,
                                        max_prompt_length=cfg.max_prompt_length or None, truncation=cfg.truncation,
                                        source=source)
    report.merge(encode_report)
    return pairs


def cached_reference(session, compute: Callable[[list], torch.Tensor],
                     token_key: Callable[[object], tuple] | None = None) -> dict[str, torch.Tensor]:
    """Reference log-probs for the train and eval examples, computed once and kept in the run
    folder as safetensors (keyed by a hash of the tokens and the model), so a resumed run
    reuses them. `token_key(example)`: the tokens the key hashes (default: a pair's)."""
    path = session.run_dir / "reference_logps.safetensors"
    key = _pairs_key(session.train_examples, session.eval_examples, session.cfg.model, token_key or _pair_tokens)
    if dist.broadcast_json(path.is_file()):  # the main process's view: all processes load, or all compute
        saved, saved_key = _read_reference(path)
        if saved_key == key:
            return saved
    start = time.perf_counter()
    logps = {"train": compute(session.train_examples)}
    if session.eval_examples:
        logps["eval"] = compute(session.eval_examples)
    session.summary["reference_seconds"] = time.perf_counter() - start
    if session.accelerator is None or session.accelerator.is_main_process:
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in logps.items()}, tmp, metadata={"key": key})
        tmp.replace(path)
    return logps


def _read_reference(path: Path) -> tuple[dict, str | None]:
    """The cached reference log-probs and their key; a file that is not safetensors is an error
    (never unpickled: a planted file must not run code)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {}).get("key")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a valid reference log-prob cache ({exc}); delete it to recompute it") from None


def _pair_tokens(pair) -> tuple:
    return pair.prompt_ids, pair.chosen_ids, pair.rejected_ids


def _pairs_key(train_pairs, eval_pairs, model_name: str, token_key=_pair_tokens) -> str:
    digest = hashlib.sha256(model_name.encode())
    for p in list(train_pairs) + list(eval_pairs):
        digest.update(repr(token_key(p)).encode())
    return digest.hexdigest()
