"""Setup of a reward-model run: records by objective -> tokenized Items -> model -> accelerate."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignlab.data import DataReport, encode_pairs, encode_prompt_response, load_records
from alignlab.data.records import BinaryRecord, PairwiseRecord, RatingRecord
from alignlab.train.reward import Item, RMConfig
from alignlab.train.run import make_run_dir, write_run_header

RECORD_TYPES = {"pairwise": PairwiseRecord, "ratings": RatingRecord, "binary": BinaryRecord, "cost": PairwiseRecord}
SAFE_KEYS = ("chosen_safe", "rejected_safe")


def _safety_flags(record, where: str) -> torch.Tensor:
    """(2,) unsafe flags [chosen, rejected] from the record's chosen_safe / rejected_safe fields."""
    flags = []
    for key in SAFE_KEYS:
        value = (record.meta or {}).get(key)
        if not isinstance(value, bool):
            raise ValueError(f"{where}, field '{key}': the cost objective needs true/false safety labels, got {value!r}")
        flags.append(0.0 if value else 1.0)
    return torch.tensor(flags)


@dataclass
class RMSession:
    cfg: RMConfig
    run_dir: Path
    tokenizer: object
    report: DataReport
    model: object = None
    accelerator: object = None
    pad_token_id: int = 0
    dry_run_text: str | None = None
    state: object = None
    final_dir: Path | None = None
    summary: dict = field(default_factory=dict)


def _records(cfg: RMConfig, path: str, given, run_dir: Path, name: str, report: DataReport) -> list:
    if given is None:
        if not path:
            return []
        result = load_records(path, format=cfg.data_format, columns=cfg.columns or None, skip_invalid=cfg.skip_invalid,
                              rejects_path=str(run_dir / f"rejects-{name}.jsonl") if cfg.skip_invalid else None,
                              pairing=cfg.pairing, seed=cfg.seed, to_pairs=cfg.objective in ("pairwise", "cost"))
        report.merge(result.report)
        given = result.records
    wanted = RECORD_TYPES[cfg.objective]
    wrong = [type(r).__name__ for r in given if not isinstance(r, wanted)]
    if wrong:
        raise ValueError(f"{path or name}: objective '{cfg.objective}' needs {wanted.__name__} records, "
                         f"got {len(wrong)} {wrong[0]} record(s)")
    return list(given)


def _fit(cfg: RMConfig, tokenizer, prompt_ids: list, response_ids: list, where: str, report: DataReport):
    """One (prompt, response) under max_length by the truncation policy (the same rules and
    report reasons as encode_pairs); None = dropped."""
    from alignlab.data.tokenize import DROPPED_LONG, prompt_encoder, truncate_pieces

    if len(prompt_ids) + len(response_ids) <= cfg.max_length:
        return prompt_ids, response_ids
    if cfg.truncation == "error":
        raise ValueError(f"{where}: prompt {len(prompt_ids)} + response {len(response_ids)} tokens exceed max_length "
                         f"{cfg.max_length}; raise max_length or set truncation: truncate | drop")
    reasons = [DROPPED_LONG]
    if cfg.truncation == "truncate":
        start = prompt_encoder(tokenizer).start
        keep = len(start) if prompt_ids[: len(start)] == start else 0
        prompt_ids, (response_ids,), reasons = truncate_pieces(prompt_ids, [response_ids], keep, cfg.max_length,
                                                               cfg.max_prompt_length or None)
    for reason in reasons:
        report.add(reason)
    return None if any(r.startswith("dropped") for r in reasons) else (prompt_ids, response_ids)


def _attribute_names(cfg: RMConfig, records: list) -> list[str]:
    if cfg.attributes:
        return list(cfg.attributes)
    names = []
    for r in records:
        for rating in r.ratings:
            names += [a for a in rating if a not in names]
    return names


def encode_items(cfg: RMConfig, tokenizer, records: list, attributes: list[str], source: str, report: DataReport) -> list[Item]:
    if cfg.objective in ("pairwise", "cost"):
        pairs, enc_report = encode_pairs(tokenizer, records, max_length=cfg.max_length,
                                         max_prompt_length=cfg.max_prompt_length or None, truncation=cfg.truncation,
                                         source=source)
        report.merge(enc_report)
        items = []
        for p in pairs:
            rec = records[p.index]
            strength = (rec.meta or {}).get("strength")
            chosen, rejected, weight = p.chosen_ids, p.rejected_ids, 1.0
            if strength is not None and cfg.strength_weighting == "flip" and strength < 0:
                chosen, rejected = rejected, chosen
                report.add("flipped: negative preference strength")
            elif strength is not None and cfg.strength_weighting == "weight":
                weight = float(torch.sigmoid(torch.tensor(float(strength))))
            if cfg.objective == "cost":
                meta = rec.meta or {}
                where = f"{meta.get('file', source)}, {meta.get('location', f'record {p.index}')}"
                target = _safety_flags(rec, where)
            else:
                target = torch.tensor([float(p.margin or 0.0)])
            items.append(Item(p.prompt_ids, [chosen, rejected], target, weight=weight))
        return items
    items = []
    for i, rec in enumerate(records):
        where = f"{source}, record {i}"
        if cfg.objective == "binary":
            fitted = _fit(cfg, tokenizer, *encode_prompt_response(tokenizer, rec.prompt, rec.response), where, report)
            if fitted:
                items.append(Item(fitted[0], [fitted[1]], torch.tensor([float(rec.desirable)])))
            continue
        for response, rating in zip(rec.responses, rec.ratings):
            fitted = _fit(cfg, tokenizer, *encode_prompt_response(tokenizer, rec.prompt, response), where, report)
            if fitted:
                target = torch.tensor([float(rating.get(a, 0.0)) for a in attributes])
                mask = torch.tensor([a in rating for a in attributes])
                items.append(Item(fitted[0], [fitted[1]], target, mask=mask))
    report.add(f"encoded {cfg.objective} examples", len(items))
    return items


def prepare_reward_session(cfg: RMConfig, *, train_records=None, eval_records=None, dry_run: bool = False):
    from accelerate import Accelerator
    from transformers import AutoTokenizer, set_seed

    from alignlab.models.reward_io import build_reward_model, resolve_backbone_path, reward_pad_token_id
    from alignlab.train.session import split_eval

    cfg.validate()
    if train_records is None and not cfg.train_data:
        raise ValueError("no training data: set train_data (a file or datasets folder)")
    run_dir = make_run_dir(cfg, f"rm-{cfg.objective}", dry_run=dry_run)
    set_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone_path(cfg.model))
    report = DataReport()
    train = _records(cfg, cfg.train_data, train_records, run_dir, "train", report)
    evals = _records(cfg, cfg.eval_data, eval_records, run_dir, "eval", report)
    train, evals = split_eval(cfg, train, evals, report)
    attributes = _attribute_names(cfg, train) if cfg.objective == "ratings" else ["reward"]
    if not attributes:
        raise ValueError("objective ratings: no rating attributes found in the data")
    session = RMSession(cfg, run_dir, tokenizer, report)
    items = {"train": encode_items(cfg, tokenizer, train, attributes, cfg.train_data or "train records", report),
             "eval": encode_items(cfg, tokenizer, evals, attributes, cfg.eval_data or "eval records", report)}
    session.pad_token_id = reward_pad_token_id(tokenizer)
    lora = (dict(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, target_modules=cfg.lora_target_modules,
                 layers=cfg.lora_layers) if cfg.lora or cfg.lora_members else None)
    if dry_run:
        session.dry_run_text = "\n".join([
            f"alignlab dry run: reward model ({cfg.objective}) on {cfg.model}",
            f"  {len(items['train'])} train / {len(items['eval'])} eval examples; batch {cfg.batch_size}"
            f"{' prompts (all their pairs)' if cfg.group_by_prompt else ''} x {cfg.grad_accum}",
            f"  ensemble: {cfg.ensemble} {'LoRA adapter(s)' if cfg.lora_members else 'head(s)'} on one "
            f"{'frozen' if cfg.frozen or cfg.lora_members else 'trained'} backbone"
            f"{f'; LoRA on the top {cfg.lora_layers} layers' if cfg.lora_layers and (cfg.lora or cfg.lora_members) else ''}"
            f"{' (the layers below run once per batch for all members)' if cfg.lora_layers and cfg.lora_members else ''}",
            *("  " + line for line in report.lines()),
        ])
        return session, items
    if not items["train"]:
        raise ValueError("no training examples left after loading and filtering: see the data report")
    session.model = build_reward_model(cfg.model, members=cfg.ensemble, attributes=attributes, gating=cfg.gating,
                                       freeze_backbone=cfg.frozen, lora=lora, seed=cfg.seed, lora_members=cfg.lora_members)
    if cfg.gradient_checkpointing and not cfg.frozen:  # a frozen backbone keeps no activations anyway
        session.model.backbone.gradient_checkpointing_enable()
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.precision]
    session.accelerator = Accelerator(mixed_precision=mixed)
    session.model.to(session.accelerator.device)
    write_run_header(run_dir, cfg, f"rm-{cfg.objective}", [cfg.train_data, cfg.eval_data])
    (run_dir / "data_report.json").write_text(json.dumps(report.to_dict(), indent=1))
    session.accelerator.print("alignlab data report:\n  " + "\n  ".join(report.lines()))
    return session, items
