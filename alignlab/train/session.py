"""Setup shared by the offline trainers, as a few small named steps: run folder, model and
tokenizer, data (loaded, converted, tokenized, reported), LoRA, accelerate; then the loop and the
final save. An algorithm file calls `start_session`, builds its Algorithm, calls `finish_session`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from alignlab.data import DataReport, encode_pairs, load_records
from alignlab.data.records import PairwiseRecord
from alignlab.models.load import add_lora, load_policy, load_tokenizer, save_final
from alignlab.train.dryrun import explain
from alignlab.train.errors import DiskFull, is_disk_full
from alignlab.train.loop import LoopState, train_loop
from alignlab.train.run import make_run_dir, release_run, write_run_header


@dataclass
class TrainingSession:
    cfg: Any
    algorithm_name: str
    run_dir: Path
    model: Any = None
    tokenizer: Any = None
    accelerator: Any = None
    train_pairs: list = field(default_factory=list)
    eval_pairs: list = field(default_factory=list)
    report: Any = None
    pad_token_id: int = 0
    dry_run_text: str | None = None
    state: LoopState | None = None
    final_dir: Path | None = None
    summary: dict = field(default_factory=dict)

    def cached_reference(self, compute: Callable[[list], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Reference log-probs for the train and eval pairs, computed once and kept in the run
        folder as safetensors (keyed by a hash of the tokens and the model), so a resumed run
        reuses them."""
        path = self.run_dir / "reference_logps.safetensors"
        key = _pairs_key(self.train_pairs, self.eval_pairs, self.cfg.model)
        if path.is_file():
            saved, saved_key = _read_reference(path)
            if saved_key == key:
                return saved
        start = time.perf_counter()
        logps = {"train": compute(self.train_pairs)}
        if self.eval_pairs:
            logps["eval"] = compute(self.eval_pairs)
        self.summary["reference_seconds"] = time.perf_counter() - start
        if self.accelerator is None or self.accelerator.is_main_process:
            tmp = path.with_suffix(".tmp")
            save_file({k: v.contiguous() for k, v in logps.items()}, tmp, metadata={"key": key})
            tmp.replace(path)
        return logps


def _read_reference(path: Path) -> tuple[dict, str | None]:
    """The cached reference log-probs and their key; a file that is not safetensors is an error
    (never unpickled: a planted file must not run code)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {}).get("key")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a valid reference log-prob cache ({exc}); delete it to recompute it") from None


def _pairs_key(train_pairs, eval_pairs, model_name: str) -> str:
    import hashlib

    digest = hashlib.sha256(model_name.encode())
    for p in list(train_pairs) + list(eval_pairs):
        digest.update(repr((p.prompt_ids, p.chosen_ids, p.rejected_ids)).encode())
    return digest.hexdigest()


def _load_split(cfg, path: str, records, run_dir: Path, name: str, report: DataReport) -> list:
    if records is None:
        if not path:
            return []
        result = load_records(
            path,
            format=cfg.data_format,
            columns=cfg.columns or None,
            skip_invalid=cfg.skip_invalid,
            rejects_path=str(run_dir / f"rejects-{name}.jsonl") if cfg.skip_invalid else None,
            pairing=cfg.pairing,
            seed=cfg.seed,
        )
        report.merge(result.report)
        records = result.records
    bad = [type(r).__name__ for r in records if not isinstance(r, PairwiseRecord)]
    if bad:
        raise ValueError(
            f"{path or name}: this trainer needs pairwise preferences, got {len(bad)} {bad[0]} records "
            "(rankings and ratings convert to pairs automatically; binary thumbs-up/down feedback trains a reward "
            "model: `alignlab train rm --objective binary`)"
        )
    return list(records)


def split_eval(cfg, train_records: list, eval_records: list, report: DataReport) -> tuple[list, list]:
    if eval_records or cfg.eval_fraction <= 0:
        return train_records, eval_records
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(train_records), generator=g).tolist()
    n_eval = max(1, int(round(cfg.eval_fraction * len(train_records))))
    report.add("held out for evaluation (eval_fraction)", n_eval)
    return [train_records[i] for i in order[n_eval:]], [train_records[i] for i in order[:n_eval]]


def _encode(cfg, tokenizer, records: list, source: str, report: DataReport) -> list:
    pairs, encode_report = encode_pairs(
        tokenizer,
        records,
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length or None,
        truncation=cfg.truncation,
        source=source,
    )
    report.merge(encode_report)
    return pairs


def start_session(cfg, algorithm_name: str, *, train_records=None, eval_records=None, model=None, tokenizer=None,
                  dry_run: bool = False) -> TrainingSession:
    from accelerate import Accelerator
    from transformers import set_seed

    cfg.validate()
    cfg.preflight()
    if train_records is None and not cfg.train_data:
        raise ValueError("no training data: set train_data (a file or datasets folder)")
    run_dir = make_run_dir(cfg, algorithm_name, dry_run=dry_run)
    set_seed(cfg.seed)
    tokenizer = tokenizer or load_tokenizer(cfg.model)
    report = DataReport()
    train_list = _load_split(cfg, cfg.train_data, train_records, run_dir, "train", report)
    eval_list = _load_split(cfg, cfg.eval_data, eval_records, run_dir, "eval", report)
    train_list, eval_list = split_eval(cfg, train_list, eval_list, report)
    session = TrainingSession(cfg, algorithm_name, run_dir, tokenizer=tokenizer, report=report)
    session.train_pairs = _encode(cfg, tokenizer, train_list, cfg.train_data or "train records", report)
    session.eval_pairs = _encode(cfg, tokenizer, eval_list, cfg.eval_data or "eval records", report) if eval_list else []
    session.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if dry_run:
        session.dry_run_text = explain(session, model)
        return session
    if not session.train_pairs:
        raise ValueError(f"{cfg.train_data or 'train records'}: no training pairs left after loading and filtering "
                         f"({'; '.join(report.lines()) or 'no records given'})")
    session.model = model if model is not None else load_policy(cfg.model)
    if cfg.gradient_checkpointing:
        session.model.gradient_checkpointing_enable()
    if cfg.lora:
        session.model = add_lora(session.model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                 target_modules=cfg.lora_target_modules, layers=cfg.lora_layers)
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.precision]
    session.accelerator = Accelerator(mixed_precision=mixed)
    session.model.to(session.accelerator.device)
    write_run_header(run_dir, cfg, algorithm_name, [cfg.train_data, cfg.eval_data])
    (run_dir / "data_report.json").write_text(json.dumps(report.to_dict(), indent=1))
    session.accelerator.print("alignlab data report:\n  " + "\n  ".join(report.lines()))
    session.accelerator.print(f"alignlab: {len(session.train_pairs)} train / {len(session.eval_pairs)} eval pairs; run folder {run_dir}")
    return session


def finish_session(session: TrainingSession, algorithm, scorer) -> TrainingSession:
    cfg = session.cfg
    try:
        session.state = train_loop(cfg, algorithm, session.model, scorer, session.accelerator, session.run_dir)
        if session.accelerator.is_main_process:
            session.final_dir = save_final(session.model, session.tokenizer, session.run_dir / "final",
                                           merge_lora=cfg.merge_lora)
    except OSError as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFull):
            raise DiskFull(session.run_dir, exc) from exc
        raise
    evals = [r for r in session.state.history if any(k.startswith("eval/") for k in r)]
    session.summary.update(
        steps=session.state.step,
        examples_seen=session.state.examples_seen,
        train_seconds=session.state.train_seconds,
        examples_per_second=session.state.examples_seen / max(session.state.train_seconds, 1e-9),
        skipped_steps=session.state.skipped_steps,
        final_eval=evals[-1] if evals else {},
        data_report=session.report.to_dict(),
    )
    (session.run_dir / "summary.json").write_text(json.dumps(session.summary, indent=1, default=float))
    release_run(session.run_dir)
    return session
