"""Supervised fine-tuning (SFT) on demonstrations: prompt/completion pairs, multi-turn
conversations or plain text (`alignlab.data.demonstrations`).

The loss (`alignlab.losses.sft.sft_loss`) is the token-mean negative log-likelihood of the target
tokens: by default the assistant's tokens of every assistant turn (`alignlab.data.sft`), or every
token with `assistant_only_loss: false`. Gradient accumulation is exact in tokens: the trainer
counts target tokens as its examples, so a window of micro-batches averages over all of their
target tokens, as one big batch would. A micro-batch of `batch_size` sequences is packed without
padding (`packing: true`) or padded; only the hidden states that predict a target token reach the
LM head (`alignlab.models.logprobs`). LoRA or full fine-tuning; no reference model.

Python API for other trainers (rejection sampling, RAFT): `train_sft(SFTConfig(...),
train_records=[(prompt, completion), ...], model=..., tokenizer=...)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


from alignlab.config import ConfigError, field, fill_defaults
from alignlab.data import DataReport
from alignlab.data.sft import SFTExample, encode_sft
from alignlab.losses.sft import sft_loss
from alignlab.models.load import load_tokenizer, save_final, trainable_policy
from alignlab.models.logprobs import SequenceScorer
from alignlab.train.config import TrainConfig
from alignlab.train.dryrun import describe, policy_lines
from alignlab.train.epochs import EpochBatches, chunks
from alignlab.train.session import (TrainingSession, close_session, open_session, require_examples, run_training,
                                    split_eval, start_training)
from alignlab.train.sft_data import pack_examples, pad_examples, read_sft_split

NOT_READ: dict[str, str] = {
    "data_format": "SFT data is JSON Lines: {prompt, completion}, {messages} or {text} per line",
    "columns": "SFT reads the prompt/completion, messages or text fields by name",
    "pairing": "SFT trains on demonstrations, not preference pairs",
    "skip_invalid": "an invalid demonstration line is always an error",
    "max_prompt_length": "over-long examples keep their start (truncation: truncate), prompt included",
}


@dataclass
class SFTConfig(TrainConfig):
    learning_rate: float = field(2e-5, "peak learning rate (LoRA usually wants 10x more)")
    assistant_only_loss: bool = field(True, "loss on the assistant tokens of every assistant turn (the completion of a prompt/completion pair); false: on every token")
    packing: bool = field(True, "pack each micro-batch's sequences into rows without padding (false: one padded row per sequence; same loss)")

    def validate(self) -> None:
        super().validate()
        for name, why in NOT_READ.items():
            if getattr(self, name) != getattr(SFTConfig(), name):
                raise ConfigError(f"{name} is set but SFT training does not read it: {why}")


@dataclass
class SFTBatch:
    indices: list[int]
    tokens: int  # target tokens: the loop's unit of examples


class SFTAlgorithm:
    """The SFT loss on micro-batches of `batch_size` sequences, shuffled per epoch by (seed, epoch)
    alone (so a resumed run sees the same batches); each batch is laid out when it is used."""

    progress_keys = ()
    unit_name = "tokens"  # target tokens: gradient accumulation averages over all of a window's

    def __init__(self, cfg: SFTConfig, model, train: list[SFTExample], evals: list[SFTExample], pad_token_id: int):
        self.cfg, self.model, self.train, self.evals, self.pad_token_id = cfg, model, train, evals, pad_token_id
        self.layout = pack_examples if cfg.packing else pad_examples
        self.hidden_size = getattr(getattr(model, "config", None), "hidden_size", None) or 1024
        self._epochs = EpochBatches(cfg.seed, len(train), lambda order: self._batches(train, order))

    def _batches(self, examples: list[SFTExample], order: list[int]) -> list[SFTBatch]:
        return [SFTBatch(c, sum(examples[j].num_targets for j in c)) for c in chunks(order, self.cfg.batch_size)]

    def micro_batches(self, epoch: int) -> list[SFTBatch]:
        return self._epochs(epoch)

    def examples_in(self, batch: SFTBatch) -> int:
        return batch.tokens

    def _loss(self, scorer, examples: list[SFTExample], batch: SFTBatch):
        device = next(self.model.parameters()).device
        packed = self.layout([examples[i] for i in batch.indices], pad_token_id=self.pad_token_id,
                             hidden_size=self.hidden_size).to(device)
        return sft_loss(scorer(packed), packed.lengths)

    def loss(self, scorer, batch: SFTBatch):
        return self._loss(scorer, self.train, batch)

    def evaluate(self, scorer) -> dict[str, float]:
        if not self.evals:
            return {}
        total, tokens = 0.0, 0
        for batch in self._batches(self.evals, list(range(len(self.evals)))):
            per_sequence, _ = self._loss(scorer, self.evals, batch)
            total, tokens = total + float(per_sequence.sum()), tokens + batch.tokens
        return {"loss": total / tokens, "ppl": math.exp(min(total / tokens, 50.0)), "target_tokens": tokens}


def encode_split(cfg: SFTConfig, tokenizer, demos: list, report: DataReport) -> list[SFTExample]:
    examples, encode_report = encode_sft(tokenizer, demos, max_length=cfg.max_length, truncation=cfg.truncation,
                                         assistant_only=cfg.assistant_only_loss)
    report.merge(encode_report)
    return examples


def train_sft(cfg: SFTConfig, *, train_records=None, eval_records=None, model=None, tokenizer=None,
              dry_run: bool = False) -> TrainingSession:
    """Python API: supervised fine-tuning per `cfg`. Records may be given in memory instead of by
    path: JSONL-shaped dicts ({prompt, completion}, {messages} or {text}), `(prompt, completion)`
    pairs or Demonstrations; `model`/`tokenizer` may be given too (e.g. the policy of an outer loop)."""
    cfg = fill_defaults(cfg)
    session = open_session(cfg, "sft", dry_run=dry_run)
    if train_records is None and not cfg.train_data:
        raise ValueError("no training data: set train_data (a JSONL file of demonstrations)")
    session.tokenizer = tokenizer = tokenizer or load_tokenizer(cfg.model)
    train = read_sft_split(cfg.train_data, train_records, "train")
    evals = read_sft_split(cfg.eval_data, eval_records, "eval")
    train, evals = split_eval(cfg, train, evals, session.report)
    session.train_examples = encode_split(cfg, tokenizer, train, session.report)
    session.eval_examples = encode_split(cfg, tokenizer, evals, session.report) if evals else []
    session.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if dry_run:
        return describe(session, "sequences", policy_lines(cfg, model, reference="not used (SFT has no reference)"))
    require_examples(session, "examples")
    model = trainable_policy(cfg, model)
    start_training(session, model)
    algorithm = SFTAlgorithm(cfg, session.model, session.train_examples, session.eval_examples, session.pad_token_id)
    run_training(session, algorithm, session.model, SequenceScorer(session.model),
                 save=lambda: save_final(session.model, tokenizer, session.run_dir / "final", merge_lora=cfg.merge_lora))
    session.summary["target_tokens"] = sum(e.num_targets for e in session.train_examples)
    session.summary["input_tokens"] = sum(len(e.input_ids) for e in session.train_examples)
    return close_session(session)
