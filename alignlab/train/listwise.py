"""Listwise preference optimization on rankings and rated completions: PRO (Song et al. 2023,
arXiv:2306.17492) and LiPO-lambda (Liu et al. 2024, arXiv:2402.01878), from
`alignlab.losses.listwise`, chosen by `loss` from the loss table.

Each example is a prompt with K >= 2 responses and a score for each: a `RatingRecord`
(UltraFeedback-style, the overall score of each completion; `score_scale` says whether each list is
rescaled to [0, 1], by default for LiPO only), a `RankingRecord`
(best first; scores spaced evenly from 1 for the best to 0 for the worst, so that LiPO's gains
2^score stay in the paper's [0, 1] label range and PRO's temperatures follow rank gaps) or a
`PairwiseRecord` (a list of two: 1 and 0). Lists of different sizes share a batch: the shorter
ones are padded and masked. All responses of a prompt go through the model in one forward with
the prompt computed once. Losses that need a reference (LiPO) read reference log-probs computed
once before training (with LoRA, the adapter disabled: no second model copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.config import ConfigError, field, fill_defaults
from alignlab.data.pairing import overall
from alignlab.data.records import PairwiseRecord, RankingRecord, RatingRecord
from alignlab.losses import LOSSES
from alignlab.models.load import load_tokenizer, save_final, trainable_policy
from alignlab.models.logprobs import SequenceScorer
from alignlab.train.config import TrainConfig
from alignlab.train.dpo_data import cached_reference
from alignlab.train.dryrun import describe, policy_lines
from alignlab.train.epochs import EpochBatches, chunks
from alignlab.train.list_data import (encode_lists, list_mask, list_token_key, pack_lists, reference_list_logps,
                                      require_list, widest)
from alignlab.train.session import (TrainingSession, close_session, load_split, open_session, require_examples,
                                    run_training, split_eval, start_training)

LISTWISE = tuple(name for name, spec in LOSSES.items() if spec.kind == "listwise")
SCORE_SCALES = ("auto", "none", "minmax")
# `score_scale: auto`: LiPO's gains 2^score assume labels in [0, 1] (the paper's scores are win
# rates), so raw ratings (UltraFeedback: 1-10) are rescaled per list; PRO's temperatures are the
# paper's raw reward-score gaps.
AUTO_SCALE = {"lipo_lambda": "minmax", "pro": "none"}
NOT_READ = {"pairing": "listwise losses train on the whole list; nothing is paired"}


@dataclass
class ListwiseConfig(TrainConfig):
    loss: str = field("lipo_lambda", "listwise loss: lipo_lambda (LiPO-lambda, with a reference) | pro (PRO, reference-free)")
    beta: float | None = field(None, "the loss's beta: LiPO's KL strength, PRO's SFT-term weight; unset: the chosen loss's paper value")
    loss_options: dict = field({}, "options of the loss, e.g. {score_temperature: false} (pro: only the order of the scores counts)")
    score_scale: str = field("auto", "ratings as scores: none (as given) | minmax (each list rescaled to [0, 1]) | auto (minmax for lipo_lambda, whose gains are 2^score; none for pro)")

    def context_defaults(self, given: frozenset) -> dict:
        """The chosen loss's paper beta and options for the settings the user did not give."""
        spec = LOSSES.get(self.loss)
        if spec is None or spec.kind != "listwise":
            return {}  # validate() names the valid losses
        return spec.paper_defaults(given, self.beta, self.loss_options)

    def validate(self) -> None:
        super().validate()
        for name, why in NOT_READ.items():
            if getattr(self, name) != getattr(ListwiseConfig(), name):
                raise ConfigError(f"{name} is set but listwise training does not read it: {why}")
        if self.score_scale not in SCORE_SCALES:
            raise ConfigError(f"score_scale must be one of {SCORE_SCALES}, got {self.score_scale!r}")
        if self.loss not in LISTWISE:
            raise ConfigError(f"loss '{self.loss}' is not a listwise loss; choose one of {list(LISTWISE)}")
        spec = LOSSES[self.loss]
        if self.beta is not None and not (self.beta > 0 if spec.needs_reference else self.beta >= 0):
            raise ConfigError(f"beta must be {'> 0' if spec.needs_reference else '>= 0'}, got {self.beta}")
        unknown = set(self.loss_options) - set(spec.options)
        if unknown:
            raise ConfigError(f"loss '{self.loss}' has no option(s) {sorted(unknown)}; its options are "
                              f"{sorted(spec.options)}")


@dataclass
class ListExample:
    prompt_ids: list[int]
    responses: list[list[int]]  # (K,) token ids of each response
    scores: list[float]  # (K,) higher = better
    index: int


@dataclass
class ListBatch:
    indices: list[int]  # positions in the split (rows of its reference log-probs)


# Which field names the list of each record type, for errors.
_LIST_FIELD = {RankingRecord: "responses", RatingRecord: "completions"}


def scored_lists(records: list, source: str) -> list[tuple[object, object, list[str], list[float]]]:
    """(record, prompt, responses, scores) of each record; a list of fewer than 2 responses or a
    record that is not a ranking, rating or pair is an error naming it."""
    out = []
    for index, r in enumerate(records):
        if isinstance(r, RankingRecord):
            require_list(r, len(r.responses), 2, "responses", source, index)
            K = len(r.responses)
            out.append((r, r.prompt, list(r.responses), [(K - 1 - k) / (K - 1) for k in range(K)]))
        elif isinstance(r, RatingRecord):
            require_list(r, len(r.responses), 2, "completions", source, index)
            out.append((r, r.prompt, list(r.responses), [overall(x) for x in r.ratings]))
        elif isinstance(r, PairwiseRecord):
            out.append((r, r.prompt, [r.chosen, r.rejected], [1.0, 0.0]))
        else:
            raise ValueError(f"{source}: listwise training needs rankings or rated completions; got a "
                             f"{type(r).__name__} (thumbs-up/down feedback trains with `alignlab train kto`)")
    return out


def encode_split(cfg: ListwiseConfig, tokenizer, records: list, source: str, report) -> list[ListExample]:
    items = scored_lists(records, source)
    encoded, encode_report = encode_lists(tokenizer, [(r, p, texts) for r, p, texts, _ in items],
                                          max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length or None,
                                          truncation=cfg.truncation, source=source)
    report.merge(encode_report)
    scale = AUTO_SCALE.get(cfg.loss, "none") if cfg.score_scale == "auto" else cfg.score_scale
    examples = [ListExample(e.prompt_ids, e.responses, rescale(items[e.index][3], scale), e.index) for e in encoded]
    tied = sum(len(set(e.scores)) == 1 for e in examples)
    if tied:
        report.add("lists with every score equal (kept; no preference signal)", tied)
    return examples


def rescale(scores: list[float], scale: str) -> list[float]:
    """`minmax`: the list's best score becomes 1 and its worst 0 (all equal: all 0)."""
    if scale == "none":
        return list(scores)
    low, high = min(scores), max(scores)
    return [(s - low) / (high - low) if high > low else 0.0 for s in scores]


class ListwiseAlgorithm:
    progress_keys = ("rewards/accuracy", "rewards/margins")

    def __init__(self, cfg: ListwiseConfig, model, train: list[ListExample], evals: list[ListExample],
                 pad_token_id: int, reference: dict[str, torch.Tensor] | None = None):
        self.cfg, self.model, self.train, self.evals, self.pad_token_id = cfg, model, train, evals, pad_token_id
        self.spec = LOSSES[cfg.loss]
        self.reference = reference or {}  # {"train": (N, K), "eval": (M, K)} when the loss needs one
        self._epochs = EpochBatches(cfg.seed, len(train), lambda order: [ListBatch(c) for c in chunks(order, cfg.batch_size)])

    def micro_batches(self, epoch: int) -> list[ListBatch]:
        return self._epochs(epoch)

    def examples_in(self, batch: ListBatch) -> int:
        return len(batch.indices)

    def _losses(self, scorer, examples: list[ListExample], split: str, batch: ListBatch):
        device = next(self.model.parameters()).device
        chosen = [examples[i] for i in batch.indices]
        K = widest(chosen)
        packed = pack_lists(chosen, K, pad_token_id=self.pad_token_id).to(device)
        policy = scorer(packed).view(len(chosen), K)  # (B, K)
        mask = list_mask(chosen, K).to(device)  # (B, K)
        scores = torch.tensor([e.scores + [0.0] * (K - len(e.scores)) for e in chosen], device=device)
        args = [policy]
        if self.spec.needs_reference:
            args.append(self.reference[split][batch.indices, :K].to(device=device, dtype=policy.dtype))
        kwargs = dict(self.cfg.loss_options)
        if self.spec.needs_lengths:
            kwargs["lengths"] = packed.lengths.view(len(chosen), K)
        return self.spec.fn(*args, scores, beta=self.cfg.beta, mask=mask, per_example=True, **kwargs)

    def loss(self, scorer, batch: ListBatch):
        return self._losses(scorer, self.train, "train", batch)

    def evaluate(self, scorer) -> dict[str, float]:
        """Means over the eval lists; rewards/accuracy over all of their ordered pairs."""
        if not self.evals:
            return {}
        totals, pairs_in_order, pairs, B = {}, 0.0, 0, self.cfg.batch_size
        for start in range(0, len(self.evals), B):
            batch = ListBatch(list(range(start, min(start + B, len(self.evals)))))
            per_example, metrics = self._losses(scorer, self.evals, "eval", batch)
            n = len(batch.indices)
            totals["loss"] = totals.get("loss", 0.0) + float(per_example.sum())
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) * n
            batch_pairs = sum(_ordered_pairs(self.evals[i].scores) for i in batch.indices)
            pairs_in_order += float(metrics["rewards/accuracy"]) * batch_pairs
            pairs += batch_pairs
        out = {k: v / len(self.evals) for k, v in totals.items()}
        out["rewards/accuracy"] = pairs_in_order / max(pairs, 1)
        return out


def _ordered_pairs(scores: list[float]) -> int:
    return sum(a > b for a in scores for b in scores)


def train_listwise(cfg: ListwiseConfig, *, train_records=None, eval_records=None, model=None, tokenizer=None,
                   dry_run: bool = False) -> TrainingSession:
    """Python API: listwise training per `cfg`; records (rankings, ratings, pairs) and model may
    be given in memory. Settings left at their defaults take the chosen loss's paper values."""
    cfg = fill_defaults(cfg)
    session = open_session(cfg, "listwise", dry_run=dry_run)
    if train_records is None and not cfg.train_data:
        raise ValueError("no training data: set train_data (rankings or rated completions)")
    session.tokenizer = tokenizer = tokenizer or load_tokenizer(cfg.model)
    train = load_split(cfg, cfg.train_data, train_records, session.run_dir, "train", session.report, to_pairs=False)
    evals = load_split(cfg, cfg.eval_data, eval_records, session.run_dir, "eval", session.report, to_pairs=False)
    # every list is checked (a list of one is an error) before anything slow runs
    scored_lists(train, cfg.train_data or "train records")
    scored_lists(evals, cfg.eval_data or "eval records")
    train, evals = split_eval(cfg, train, evals, session.report)
    session.train_examples = encode_split(cfg, tokenizer, train, cfg.train_data or "train records", session.report)
    session.eval_examples = encode_split(cfg, tokenizer, evals, cfg.eval_data or "eval records", session.report) \
        if evals else []
    session.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    spec = LOSSES[cfg.loss]
    if dry_run:
        sizes = [len(e.responses) for e in session.train_examples] or [0]
        lines = [f"lists: {min(sizes)} to {max(sizes)} responses a prompt ({sum(sizes)} responses in all); "
                 f"loss {cfg.loss} ({spec.paper})"]
        reference = "precomputed once before training (no second model copy)" if spec.needs_reference else \
            f"not used ({cfg.loss} is reference-free)"
        return describe(session, "lists", lines + policy_lines(cfg, model, reference=reference))
    require_examples(session, "lists")
    model = trainable_policy(cfg, model)
    start_training(session, model)
    reference = {}
    if spec.needs_reference:
        reference = cached_reference(session, lambda examples: reference_list_logps(
            session.model, examples, batch_size=cfg.batch_size, pad_token_id=session.pad_token_id,
            progress=cfg.progress), token_key=list_token_key)
    algorithm = ListwiseAlgorithm(cfg, session.model, session.train_examples, session.eval_examples,
                                  session.pad_token_id, reference)
    run_training(session, algorithm, session.model, SequenceScorer(session.model),
                 save=lambda: save_final(session.model, tokenizer, session.run_dir / "final", merge_lora=cfg.merge_lora))
    return close_session(session)
