"""The DPO family: offline preference optimization on (prompt, chosen, rejected) pairs.

One loss from `alignlab.losses.LOSSES` (dpo, ipo, cdpo, hinge, fdpo_*, simpo, cpl) plugged into
the one loop. Per step, chosen and rejected go through the model in ONE forward with the prompt
computed once (alignlab.models.packing). The reference policy costs one no-grad pass over the data
before training (`reference: precompute`, the default; with LoRA that pass runs with the adapter
disabled, so there is never a second model copy), or an adapter-disabled forward per step
(`reference: adapter_disabled`), or nothing for reference-free losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.config import ConfigError, field, fill_defaults
from alignlab.losses import LOSSES
from alignlab.models.load import load_tokenizer, reference_context, save_final, trainable_policy
from alignlab.models.logprobs import SequenceScorer
from alignlab.models.packing import PackedBatch, pack_pairs
from alignlab.train import distributed as dist
from alignlab.train.config import TrainConfig
from alignlab.train.dpo_data import cached_reference, encode_split, pairwise_records
from alignlab.train.dryrun import describe, policy_lines
from alignlab.train.epochs import EpochBatches
from alignlab.train.session import (TrainingSession, close_session, open_session, require_examples, run_training,
                                    split_eval, start_training)

REFERENCE_MODES = ("auto", "precompute", "adapter_disabled", "none")
# Ranges of the loss options, checked before anything loads (the loss functions check them too,
# but only at the first step).
OPTION_RANGES = {
    "label_smoothing": (lambda v: 0 <= v <= 0.5, "[0, 0.5]"),
    "alpha": (lambda v: 0 < v <= 1, "(0, 1]"),
    "lambda_": (lambda v: 0 < v <= 1, "(0, 1]"),
    "gamma": (lambda v: v >= 0, ">= 0"),
}


@dataclass
class DPOConfig(TrainConfig):
    loss: str = field("dpo", "pairwise loss: dpo | ipo | cdpo | hinge | fdpo_js | fdpo_fkl | fdpo_alpha | simpo | cpl")
    beta: float | None = field(None, "the loss's beta (KL strength / inverse temperature); unset: the chosen loss's paper value (dpo 0.1, simpo 2.0, ...)")
    loss_options: dict = field({}, "options of the loss, e.g. {label_smoothing: 0.1} (cdpo), {alpha: 0.5} (fdpo_alpha), {gamma: 0.5} (simpo); options not given take the loss's paper values")
    reference: str = field("auto", "reference log-probs: auto (precompute) | precompute | adapter_disabled (LoRA only) | none")
    share_prompt: bool = field(True, "compute the prompt once for chosen and rejected (prefix sharing)")

    def context_defaults(self, given: frozenset) -> dict:
        """The chosen loss's paper values (LossSpec.default_beta, LossSpec.options) for the settings
        the user did not give; the options the user gave win over the loss's own."""
        spec = LOSSES.get(self.loss)
        if spec is None:
            return {}  # validate() names the valid losses
        return spec.paper_defaults(given, self.beta, self.loss_options)

    def validate(self) -> None:
        super().validate()
        if self.loss not in LOSSES or LOSSES[self.loss].kind != "pairwise":
            pairwise = sorted(n for n, s in LOSSES.items() if s.kind == "pairwise")
            raise ConfigError(f"loss '{self.loss}' is not a pairwise loss; choose one of {pairwise}")
        if self.beta is not None and not self.beta > 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")
        unknown = set(self.loss_options) - set(LOSSES[self.loss].options)
        if unknown:
            raise ConfigError(
                f"loss '{self.loss}' has no option(s) {sorted(unknown)}; its options are {sorted(LOSSES[self.loss].options)}"
            )
        for name, value in self.loss_options.items():
            ok, allowed = OPTION_RANGES.get(name, (lambda v: True, ""))
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(value):
                raise ConfigError(f"loss_options: {name} must be a number {allowed}, got {value!r}".replace("  ", " "))
        if self.reference not in REFERENCE_MODES:
            raise ConfigError(f"reference must be one of {REFERENCE_MODES}")
        if self.reference == "adapter_disabled" and not self.lora:
            raise ConfigError("reference: adapter_disabled needs lora: true (without LoRA use precompute)")
        if self.reference == "none" and LOSSES[self.loss].needs_reference:
            raise ConfigError(f"loss '{self.loss}' needs a reference policy; reference: none is not possible")


@dataclass
class PairBatch:
    indices: torch.Tensor  # (B,) positions in the pair list (keys of the reference cache)
    packed: PackedBatch


def make_batches(pairs, order: list[int], batch_size: int, pad_token_id: int, share_prompt: bool) -> list[PairBatch]:
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        packed = pack_pairs([pairs[i] for i in idx], pad_token_id=pad_token_id, share_prompt=share_prompt)
        out.append(PairBatch(torch.tensor(idx), packed))
    return out


@torch.no_grad()
def reference_logps(model, pairs, *, batch_size: int, pad_token_id: int, progress: bool = True) -> torch.Tensor:
    """(N, 2) reference log-probs [chosen, rejected] of every pair, in one no-grad pass with the
    LoRA adapter disabled (or the untouched initial weights for full fine-tuning). Each process
    scores its shard of the pairs; every process returns all N rows."""
    from tqdm.auto import tqdm

    scorer = SequenceScorer(model)
    was_training = model.training
    model.eval()
    out = torch.zeros(len(pairs), 2)  # rows of the other processes' shards stay 0 until the sum
    batches = make_batches(pairs, dist.shard_indices(len(pairs)), batch_size, pad_token_id, True)
    device = next(model.parameters()).device
    with reference_context(model):
        for batch in tqdm(batches, desc="reference log-probs", disable=not progress, dynamic_ncols=True):
            logps = scorer(batch.packed.to(device)).float().cpu()
            B = len(batch.indices)
            out[batch.indices, 0], out[batch.indices, 1] = logps[:B], logps[B:]
    model.train(was_training)
    return dist.all_reduce_sum(out)


class DPOAlgorithm:
    progress_keys = ("rewards/accuracy", "rewards/margins")

    def __init__(self, cfg: DPOConfig, model, train_pairs, eval_pairs, pad_token_id: int, reference=None,
                 extra_eval=None):
        self.cfg, self.model = cfg, model
        self.spec = LOSSES[cfg.loss]
        self.train_pairs, self.eval_pairs = train_pairs, eval_pairs
        self.pad_token_id = pad_token_id
        self.reference = reference or {}  # {"train": (N, 2), "eval": (M, 2)} when precomputed
        self._epochs = EpochBatches(cfg.seed, len(self.train_pairs), lambda order: make_batches(
            self.train_pairs, order, cfg.batch_size, pad_token_id, cfg.share_prompt))
        self.extra_eval = extra_eval  # callable(model) -> metrics, e.g. the demo's gold-reward probe

    def micro_batches(self, epoch: int) -> list[PairBatch]:
        return self._epochs(epoch)

    def examples_in(self, batch: PairBatch) -> int:
        return len(batch.indices)

    def _reference(self, split: str, batch: PairBatch, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not self.spec.needs_reference:  # reference-free losses (simpo, cpl) never pay for one
            return None, None
        if split in self.reference:
            ref = self.reference[split][batch.indices].to(device)
            return ref[:, 0], ref[:, 1]
        with torch.no_grad(), reference_context(self.model):  # adapter_disabled mode
            logps = SequenceScorer(self.model)(batch.packed.to(device))
        B = len(batch.indices)
        return logps[:B], logps[B:]

    def _losses(self, scorer, batch: PairBatch, split: str):
        device = next(self.model.parameters()).device
        packed = batch.packed.to(device)
        logps = scorer(packed)  # (2B,)
        B = len(batch.indices)
        ref_c, ref_r = self._reference(split, batch, device)
        kwargs = dict(self.cfg.loss_options)
        if self.spec.needs_lengths:
            kwargs.update(chosen_lengths=packed.lengths[:B], rejected_lengths=packed.lengths[B:])
        return self.spec.fn(logps[:B], logps[B:], ref_c, ref_r, beta=self.cfg.beta, per_example=True, **kwargs)

    def loss(self, scorer, batch: PairBatch):
        return self._losses(scorer, batch, "train")

    def evaluate(self, scorer) -> dict[str, float]:
        extra = self.extra_eval(self.model) if self.extra_eval is not None else {}
        if not self.eval_pairs:
            return extra
        totals, n = {}, 0
        order = list(range(len(self.eval_pairs)))
        for batch in make_batches(self.eval_pairs, order, self.cfg.batch_size, self.pad_token_id, self.cfg.share_prompt):
            per_example, metrics = self._losses(scorer, batch, "eval")
            b = len(batch.indices)
            totals["loss"] = totals.get("loss", 0.0) + float(per_example.sum())
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) * b
            n += b
        return {**{k: v / n for k, v in totals.items()}, **extra}


def train_dpo(cfg: DPOConfig, *, train_records=None, eval_records=None, model=None, tokenizer=None,
              dry_run: bool = False, extra_eval=None) -> TrainingSession:
    """Python API: train per `cfg`; records/model may be given in memory instead of by path.
    Settings left at their defaults take the chosen loss's paper values (`fill_defaults`)."""
    cfg = fill_defaults(cfg)
    session = open_session(cfg, "dpo", dry_run=dry_run)
    if train_records is None and not cfg.train_data:
        raise ValueError("no training data: set train_data (a file or datasets folder)")
    session.tokenizer = tokenizer = tokenizer or load_tokenizer(cfg.model)
    train = pairwise_records(cfg, cfg.train_data, train_records, session.run_dir, "train", session.report)
    evals = pairwise_records(cfg, cfg.eval_data, eval_records, session.run_dir, "eval", session.report)
    train, evals = split_eval(cfg, train, evals, session.report)
    session.train_examples = encode_split(cfg, tokenizer, train, cfg.train_data or "train records", session.report)
    session.eval_examples = encode_split(cfg, tokenizer, evals, cfg.eval_data or "eval records", session.report) if evals else []
    session.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if dry_run:
        return describe(session, "pairs", policy_lines(cfg, model, reference=_REFERENCE_TEXT[cfg.reference]))
    require_examples(session, "pairs")
    model = trainable_policy(cfg, model)
    start_training(session, model)
    reference = {}
    if LOSSES[cfg.loss].needs_reference and cfg.reference in ("auto", "precompute"):
        reference = cached_reference(session, lambda pairs: reference_logps(
            session.model, pairs, batch_size=cfg.batch_size * 2, pad_token_id=session.pad_token_id,
            progress=cfg.progress))
    algorithm = DPOAlgorithm(cfg, session.model, session.train_examples, session.eval_examples, session.pad_token_id,
                             reference, extra_eval)
    run_training(session, algorithm, session.model, SequenceScorer(session.model),
                 save=lambda: save_final(session.model, tokenizer, session.run_dir / "final", merge_lora=cfg.merge_lora))
    return close_session(session)


_REFERENCE_TEXT = {
    "auto": "precomputed once before training (no second model copy)",
    "precompute": "precomputed once before training (no second model copy)",
    "adapter_disabled": "same model with the LoRA adapter disabled, every step (no second copy)",
    "none": "not used (reference-free loss)",
}
