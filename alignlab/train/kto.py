"""KTO on unpaired thumbs-up/down feedback (Ethayarajh et al. 2024, arXiv:2402.01306).

Each example is one (prompt, response) judged desirable or undesirable (`BinaryRecord`); a
preference pair counts as two, its chosen response desirable and its rejected one undesirable. The loss
(`alignlab.losses.binary.kto`) compares the implied reward r = log pi(y|x) - log ref(y|x) with
the reference point z0 = max(0, KL(pi || ref)), which KTO estimates on mismatched pairs: the
batch's prompts each with an unrelated response, z0 = max(0, mean log pi(y'|x) / ref(y'|x)),
detached (`kto_reference_point`).

How the mismatched pairs are built: every example is given, once and seeded, the response of
another example of its split (a random permutation shifted by one, so never its own), and the
batch's z0 is the mean over its examples' mismatched pairs. The paper shifts the responses
within each batch instead; fixing the partner lets the reference score the mismatched pairs in
the one no-grad pass before training, like the matched ones (as TRL does), and the estimate is
the same kind of mean over the batch's prompts. The mismatched response is scored in the same
forward as the example's own, the prompt computed once for both. A mismatched response longer
than its prompt leaves room for is cut to fit `max_length`.

Under data parallelism the processes average their mismatched-pair log-ratios before the clamp,
so every process uses the same z0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.config import ConfigError, field, fill_defaults
from alignlab.data.records import BinaryRecord, PairwiseRecord
from alignlab.losses.binary import kto
from alignlab.models.load import load_tokenizer, save_final, trainable_policy
from alignlab.models.logprobs import SequenceScorer
from alignlab.train.config import TrainConfig
from alignlab.train.dpo_data import cached_reference
from alignlab.train.dryrun import describe, policy_lines
from alignlab.train.epochs import EpochBatches, chunks
from alignlab.train.list_data import encode_lists, list_token_key, pack_lists, reference_list_logps
from alignlab.train.session import (TrainingSession, close_session, load_split, open_session, require_examples,
                                    run_training, split_eval, start_training)

# The paper's advice (section 4.2): lambda_D n_D / (lambda_U n_U) in [1, 4/3].
RECOMMENDED_RATIO = (1.0, 4.0 / 3.0)
NOT_READ = {"pairing": "KTO trains on single labelled responses; nothing is paired"}


@dataclass
class KTOConfig(TrainConfig):
    beta: float = field(0.1, "KL strength beta of the implied reward (paper: 0.1)")
    desirable_weight: float = field(1.0, "lambda_D, the weight of desirable examples' losses (paper: 1)")
    undesirable_weight: float = field(1.0, "lambda_U, the weight of undesirable examples' losses (paper: 1); the paper advises lambda_D n_D / (lambda_U n_U) in [1, 4/3]")

    def validate(self) -> None:
        super().validate()
        for name, why in NOT_READ.items():
            if getattr(self, name) != getattr(KTOConfig(), name):
                raise ConfigError(f"{name} is set but KTO training does not read it: {why}")
        if not self.beta > 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")
        if not (self.desirable_weight > 0 and self.undesirable_weight > 0):
            raise ConfigError("desirable_weight and undesirable_weight must be > 0")


@dataclass
class KTOExample:
    prompt_ids: list[int]
    response_ids: list[int]
    kl_response_ids: list[int]  # another example's response: the mismatched pair (x, y')
    desirable: bool
    index: int

    @property
    def responses(self) -> list[list[int]]:
        return [self.response_ids, self.kl_response_ids]


@dataclass
class KTOBatch:
    indices: list[int]  # positions in the split (rows of its reference log-probs)


def binary_records(path: str, records, source: str, report) -> list[BinaryRecord]:
    """Thumbs-up/down records; a pair becomes two (chosen desirable, rejected undesirable), as in
    the paper's experiments on paired data, counted in the report."""
    out, split = [], 0
    for r in records:
        if isinstance(r, PairwiseRecord):
            out += [BinaryRecord(r.prompt, r.chosen, True, r.annotator, dict(r.meta)),
                    BinaryRecord(r.prompt, r.rejected, False, r.annotator, dict(r.meta))]
            split += 1
        elif isinstance(r, BinaryRecord):
            out.append(r)
        else:
            raise ValueError(f"{path or source}: KTO needs thumbs-up/down records (prompt, completion, label) or "
                             f"pairs; got a {type(r).__name__} (rankings and ratings train with "
                             "`alignlab train listwise`)")
    if split:
        report.add("pairs split into a desirable and an undesirable example", split)
    return out


def encode_split(cfg: KTOConfig, tokenizer, records: list[BinaryRecord], source: str, report) -> list[KTOExample]:
    """Tokenized examples, each with its mismatched partner's response (seeded, never its own)."""
    encoded, encode_report = encode_lists(tokenizer, [(r, r.prompt, [r.response]) for r in records],
                                          max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length or None,
                                          truncation=cfg.truncation, source=source)
    report.merge(encode_report)
    if len(encoded) == 1:
        raise ValueError(f"{source}: 1 example; KTO needs at least 2 a split (the reference point pairs each "
                         "prompt with another example's response): give more data or a larger eval_fraction")
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(encoded), generator=g).tolist()
    partner = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
    # the partner's response is cut to the room this prompt leaves (the prompt fits with >= 1 token)
    room = [cfg.max_length - len(e.prompt_ids) for e in encoded]
    return [KTOExample(e.prompt_ids, e.responses[0], encoded[partner[i]].responses[0][: room[i]],
                       records[e.index].desirable, e.index) for i, e in enumerate(encoded)]


def reference_point(policy_kl_logps: torch.Tensor, reference_kl_logps: torch.Tensor) -> torch.Tensor:
    """z0 = max(0, mean(pi(y'|x) - ref(y'|x))), detached, the mean taken over every process."""
    diffs = (policy_kl_logps - reference_kl_logps).detach().float()  # (B,)
    total = torch.stack([diffs.sum(), torch.tensor(float(len(diffs)), device=diffs.device)])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).clamp(min=0)


class KTOAlgorithm:
    progress_keys = ("rewards/margins", "kl")

    def __init__(self, cfg: KTOConfig, model, train: list[KTOExample], evals: list[KTOExample], pad_token_id: int,
                 reference: dict[str, torch.Tensor]):
        self.cfg, self.model, self.train, self.evals, self.pad_token_id = cfg, model, train, evals, pad_token_id
        self.reference = reference  # {"train": (N, 2), "eval": (M, 2)}: [own response, mismatched response]
        self._epochs = EpochBatches(cfg.seed, len(train), lambda order: [KTOBatch(c) for c in chunks(order, cfg.batch_size)])

    def micro_batches(self, epoch: int) -> list[KTOBatch]:
        return self._epochs(epoch)

    def examples_in(self, batch: KTOBatch) -> int:
        return len(batch.indices)

    def _losses(self, scorer, examples: list[KTOExample], split: str, batch: KTOBatch):
        device = next(self.model.parameters()).device
        chosen = [examples[i] for i in batch.indices]
        logps = scorer(pack_lists(chosen, 2, pad_token_id=self.pad_token_id).to(device)).view(len(chosen), 2)
        reference = self.reference[split][batch.indices].to(device=device, dtype=logps.dtype)  # (B, 2)
        z0 = reference_point(logps[:, 1], reference[:, 1])
        labels = torch.tensor([e.desirable for e in chosen], device=device)
        return kto(logps[:, 0], reference[:, 0], labels, beta=self.cfg.beta, kl_reference=z0,
                   desirable_weight=self.cfg.desirable_weight, undesirable_weight=self.cfg.undesirable_weight,
                   per_example=True)

    def loss(self, scorer, batch: KTOBatch):
        return self._losses(scorer, self.train, "train", batch)

    def evaluate(self, scorer) -> dict[str, float]:
        """Loss and z0 averaged over the eval examples; the implied rewards beta * r averaged over
        all desirable and all undesirable eval examples."""
        if not self.evals:
            return {}
        loss = kl = 0.0
        sums, counts = {True: 0.0, False: 0.0}, {True: 0, False: 0}
        B = self.cfg.batch_size
        for start in range(0, len(self.evals), B):
            batch = KTOBatch(list(range(start, min(start + B, len(self.evals)))))
            per_example, metrics = self._losses(scorer, self.evals, "eval", batch)
            n = len(batch.indices)
            loss, kl = loss + float(per_example.sum()), kl + float(metrics["kl"]) * n
            for label, key in ((True, "desirable"), (False, "undesirable")):
                c = int(metrics[f"count/{key}"])
                sums[label] += float(metrics["rewards/chosen" if label else "rewards/rejected"]) * c
                counts[label] += c
        chosen, rejected = (sums[k] / max(counts[k], 1) for k in (True, False))
        return {"loss": loss / len(self.evals), "kl": kl / len(self.evals), "rewards/chosen": chosen,
                "rewards/rejected": rejected, "rewards/margins": chosen - rejected}


def balance_lines(cfg: KTOConfig, examples: list[KTOExample]) -> list[str]:
    """The desirable:undesirable balance and, outside the paper's range, a warning saying how to fix it."""
    n_d = sum(e.desirable for e in examples)
    n_u = len(examples) - n_d
    lines = [f"desirable:undesirable examples = {n_d}:{n_u}"]
    if n_d == 0 or n_u == 0:
        return lines + [f"warning: no {'desirable' if n_d == 0 else 'undesirable'} examples; KTO then only pushes "
                        "rewards one way"]
    ratio = cfg.desirable_weight * n_d / (cfg.undesirable_weight * n_u)
    low, high = RECOMMENDED_RATIO
    lines.append(f"lambda_D n_D / (lambda_U n_U) = {cfg.desirable_weight:g}*{n_d} / ({cfg.undesirable_weight:g}*{n_u})"
                 f" = {ratio:.3f}")
    if not low <= ratio <= high:
        suggested = n_u / n_d * cfg.undesirable_weight
        lines.append(f"warning: outside the paper's recommended [1, 4/3]; e.g. desirable_weight: {suggested:.3g} "
                     f"(up to {suggested * high:.3g}) with undesirable_weight: {cfg.undesirable_weight:g}")
    return lines


def train_kto(cfg: KTOConfig, *, train_records=None, eval_records=None, model=None, tokenizer=None,
              dry_run: bool = False) -> TrainingSession:
    """Python API: KTO per `cfg`; records (BinaryRecord) and model may be given in memory."""
    cfg = fill_defaults(cfg)
    session = open_session(cfg, "kto", dry_run=dry_run)
    if train_records is None and not cfg.train_data:
        raise ValueError("no training data: set train_data (a file of prompt, completion, label rows)")
    session.tokenizer = tokenizer = tokenizer or load_tokenizer(cfg.model)
    read = {}
    for name, path, records in (("train", cfg.train_data, train_records), ("eval", cfg.eval_data, eval_records)):
        loaded = load_split(cfg, path, records, session.run_dir, name, session.report, to_pairs=False)
        read[name] = binary_records(path, loaded, f"{name} records", session.report)
    train, evals = split_eval(cfg, read["train"], read["eval"], session.report)
    session.train_examples = encode_split(cfg, tokenizer, train, cfg.train_data or "train records", session.report)
    session.eval_examples = encode_split(cfg, tokenizer, evals, cfg.eval_data or "eval records", session.report) \
        if evals else []
    session.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    balance = balance_lines(cfg, session.train_examples)
    session.summary["balance"] = balance
    if dry_run:
        lines = policy_lines(cfg, model, reference="precomputed once before training, for each example's response "
                                                   "and its mismatched pair (no second model copy)")
        return describe(session, "examples", ["KTO data balance:", *("  " + line for line in balance), *lines])
    require_examples(session, "examples")
    model = trainable_policy(cfg, model)
    start_training(session, model)
    if any(line.startswith("warning") for line in balance):
        session.accelerator.print("alignlab KTO: " + "; ".join(balance))
    reference = cached_reference(session, lambda examples: reference_list_logps(
        session.model, examples, batch_size=cfg.batch_size * 2, pad_token_id=session.pad_token_id,
        progress=cfg.progress), token_key=list_token_key)
    algorithm = KTOAlgorithm(cfg, session.model, session.train_examples, session.eval_examples, session.pad_token_id,
                             reference)
    run_training(session, algorithm, session.model, SequenceScorer(session.model),
                 save=lambda: save_final(session.model, tokenizer, session.run_dir / "final", merge_lora=cfg.merge_lora))
    return close_session(session)

