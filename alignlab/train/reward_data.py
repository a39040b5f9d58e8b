"""A reward-model run's data and model: records by objective -> tokenized Items -> the model, on
the shared run setup (`alignlab.train.session`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from alignlab.data import DataReport, encode_pairs
from alignlab.data.records import BinaryRecord
from alignlab.data.tokenize import DROPPED_LONG, bound_raw_length, fit_to_length, prompt_encoder
from alignlab.models.reward_io import (
    META,
    build_reward_model,
    load_reward_model,
    resolve_backbone_path,
    reward_pad_token_id,
)
from alignlab.preferences.pairwise import joint_response
from alignlab.train.dryrun import batch_lines, describe
from alignlab.train.loop import sharded_model
from alignlab.train.reward_config import Item, RMConfig
from alignlab.train.session import load_split, open_session, require_examples, split_eval, start_training

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


def _records(cfg: RMConfig, path: str, given, run_dir: Path, name: str, report: DataReport) -> list:
    records = load_split(cfg, path, given, run_dir, name, report, to_pairs=cfg.spec.paired)
    wanted = cfg.spec.record
    wrong = [type(r).__name__ for r in records if not isinstance(r, wanted)]
    if wrong:
        raise ValueError(f"{path or name}: objective '{cfg.objective}' needs {wanted.__name__} records, "
                         f"got {len(wrong)} {wrong[0]} record(s)")
    if cfg.spec.joint:  # the preference model's f reads both responses: BT on the two orders
        records = [dataclasses.replace(r, chosen=joint_response(r.chosen, r.rejected),
                                       rejected=joint_response(r.rejected, r.chosen)) for r in records]
    return records


def _fit(cfg: RMConfig, tokenizer, prompt_ids: list, response_ids: list, where: str, report: DataReport):
    """One (prompt, response) under max_length by the truncation policy (the same rules and
    report reasons as encode_pairs); None = dropped."""
    if len(prompt_ids) + len(response_ids) <= cfg.max_length:
        return prompt_ids, response_ids
    if cfg.truncation == "error":
        raise ValueError(f"{where}: prompt {len(prompt_ids)} + response {len(response_ids)} tokens exceed max_length "
                         f"{cfg.max_length}; raise max_length or set truncation: truncate | drop")
    reasons = [DROPPED_LONG]
    if cfg.truncation == "truncate":
        prompt_ids, (response_ids,), reasons = fit_to_length(prompt_encoder(tokenizer), prompt_ids, [response_ids],
                                                             cfg.max_length, cfg.max_prompt_length or None)
    for reason in reasons:
        report.add(reason)
    return None if any(r.startswith("dropped") for r in reasons) else (prompt_ids, response_ids)


def _encode_one(cfg: RMConfig, tokenizer, prompt, response: str, source: str, where: str, report: DataReport):
    """One (prompt, response) tokenized under max_length (None: dropped). A text too long for
    max_length by its raw length alone is cut or refused before it is tokenized whole."""
    encoder = prompt_encoder(tokenizer)
    bounded = bound_raw_length(encoder, prompt, [response], cfg.max_length, cfg.truncation, file=source,
                               location=where.removeprefix(f"{source}, "))
    if bounded is None:
        report.add(DROPPED_LONG)
        return None
    prompt, (response,) = bounded
    return _fit(cfg, tokenizer, encoder.prompt(prompt), encoder.response(response), where, report)


def _attribute_names(cfg: RMConfig, records: list, trained: dict | None) -> list[str]:
    """The attributes the model scores: one reward, the trained model's, or the ratings' names."""
    if cfg.spec.attributes == "reward":
        return ["reward"]
    if cfg.spec.attributes == "model":
        return list(trained["attributes"])
    if cfg.attributes:
        return list(cfg.attributes)
    names = []
    for r in records:
        for rating in r.ratings:
            names += [a for a in rating if a not in names]
    return names


def encode_items(cfg: RMConfig, tokenizer, records: list, attributes: list[str], source: str, report: DataReport) -> list[Item]:
    if cfg.spec.paired:
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
            if cfg.spec.safety_labels:
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
        if isinstance(rec, BinaryRecord):
            fitted = _encode_one(cfg, tokenizer, rec.prompt, rec.response, source, where, report)
            if fitted:
                items.append(Item(fitted[0], [fitted[1]], torch.tensor([float(rec.desirable)])))
            continue
        for response, rating in zip(rec.responses, rec.ratings):
            fitted = _encode_one(cfg, tokenizer, rec.prompt, response, source, where, report)
            if fitted:
                target = torch.tensor([float(rating.get(a, 0.0)) for a in attributes])
                mask = torch.tensor([a in rating for a in attributes])
                items.append(Item(fitted[0], [fitted[1]], target, mask=mask))
    report.add(f"encoded {cfg.objective} examples", len(items))
    return items


def trained_ratings_model(path: str) -> dict:
    """The metadata of the trained ratings model whose gate objective `gate` trains; one clear
    line when `path` is not one (checked before any data or weights are loaded)."""
    meta_path = Path(path) / META
    if not meta_path.is_file():
        raise ValueError(f"--model {path}: objective gate trains the gate of a reward model saved by "
                         f"`alignlab train rm --objective ratings`; this folder has no {META}")
    meta = json.loads(meta_path.read_text())
    if len(meta.get("attributes", [])) < 2:
        raise ValueError(f"--model {path}: a gate mixes several rating attributes; this model scores "
                         f"{meta.get('attributes')} (train it with --objective ratings on multi-attribute data)")
    return meta


def gate_only(model) -> None:
    """Freeze everything of a trained ratings model but its gate (added, uniform, if it has none) and
    the gate's Bradley-Terry scaling (ArmoRM stage 2)."""
    if model.gate is None:
        model.add_gate()
    model.requires_grad_(False)
    model.gate.requires_grad_(True)
    model.gate_log_beta.requires_grad_(True)
    model.freeze_backbone = model.gate_only = True
    model.gate_trained = False


def _build_model(cfg: RMConfig, attributes: list[str]):
    if cfg.spec.trains == "gate":
        model = load_reward_model(cfg.model)[0]
        gate_only(model)
        return model
    lora = (dict(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, target_modules=cfg.lora_target_modules,
                 layers=cfg.lora_layers) if cfg.lora or cfg.lora_members else None)
    return build_reward_model(cfg.model, members=cfg.ensemble, attributes=attributes, freeze_backbone=cfg.frozen,
                              lora=lora, seed=cfg.seed, lora_members=cfg.lora_members)


def _model_lines(cfg: RMConfig, attributes: list[str]) -> list[str]:
    if cfg.spec.trains == "gate":
        what = f"  the gate over {attributes} of the trained model; its backbone and attribute heads frozen"
    else:
        what = (f"  ensemble: {cfg.ensemble} {'LoRA adapter(s)' if cfg.lora_members else 'head(s)'} on one "
                f"{'frozen' if cfg.frozen or cfg.lora_members else 'trained'} backbone"
                f"{f'; LoRA on the top {cfg.lora_layers} layers' if cfg.lora_layers and (cfg.lora or cfg.lora_members) else ''}"
                f"{' (the layers below run once per batch for all members)' if cfg.lora_layers and cfg.lora_members else ''}")
    if cfg.spec.joint:
        return ["model:", "  pairwise preference model: one head on (prompt, response A, response B), "
                "P(a ≻ b) = σ(f(x, a, b) − f(x, b, a))", what]
    return ["model:", f"  reward model ({cfg.objective}) over attributes {attributes}", what]


def prepare_reward_session(cfg: RMConfig, *, train_records=None, eval_records=None, dry_run: bool = False):
    """(session, items): the run opened, its data tokenized into Items and, unless a dry run, the
    reward model built and handed to accelerate."""
    from transformers import AutoTokenizer

    session = open_session(cfg, cfg.run_name, dry_run=dry_run)
    if train_records is None and not cfg.train_data:
        raise ValueError("no training data: set train_data (a file or datasets folder)")
    trained = trained_ratings_model(cfg.model) if cfg.spec.trains == "gate" else None
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone_path(cfg.model) if trained is None else cfg.model)
    session.tokenizer, report, run_dir = tokenizer, session.report, session.run_dir
    train = _records(cfg, cfg.train_data, train_records, run_dir, "train", report)
    evals = _records(cfg, cfg.eval_data, eval_records, run_dir, "eval", report)
    train, evals = split_eval(cfg, train, evals, report)
    attributes = _attribute_names(cfg, train, trained)
    if not attributes:
        raise ValueError(f"objective {cfg.objective}: no rating attributes found in the data")
    items = {"train": encode_items(cfg, tokenizer, train, attributes, cfg.train_data or "train records", report),
             "eval": encode_items(cfg, tokenizer, evals, attributes, cfg.eval_data or "eval records", report)}
    session.train_examples, session.eval_examples = items["train"], items["eval"]
    session.pad_token_id = reward_pad_token_id(tokenizer)
    if dry_run:
        if not cfg.group_by_prompt:
            return describe(session, "examples", _model_lines(cfg, attributes)), items
        prompts = [len({tuple(it.prompt_ids) for it in items[k]}) for k in ("train", "eval")]  # a batch counts prompts
        batch = batch_lines(cfg, *prompts, "prompts (each with all its pairs)")
        return describe(session, "prompts", _model_lines(cfg, attributes), batch), items
    require_examples(session, "examples")
    model = _build_model(cfg, attributes)
    if cfg.gradient_checkpointing and not cfg.frozen:  # a frozen backbone keeps no activations anyway
        model.backbone.gradient_checkpointing_enable()
    start_training(session, model)
    if sharded_model(session.accelerator):
        raise ValueError("reward-model training under FSDP or DeepSpeed is not supported yet (its centering pass and "
                         "save run on the main process); launch with configs/accelerate/ddp.yaml (docs/distributed.md)")
    return session, items
