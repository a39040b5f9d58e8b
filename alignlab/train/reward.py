"""Reward-model training on the one loop: pairwise Bradley-Terry (margin, label smoothing,
centering, strength weights), pointwise ratings regression, binary thumbs-up classification;
ensembles of K heads on one backbone, each member trained on its own bootstrap weights.

Batches hold the *distinct sequences* (prompt_ids, response_ids) of their examples, each encoded
once, and every example's index into them: a pairwise micro-batch of B pairs is at most 2B
sequences, packed without padding for causal backbones (a prompt computed once for all its
responses) and padded per row for encoders. With `group_by_prompt`, a micro-batch holds whole
prompts with all their pairs (Ouyang et al. 2022, §3.5), so K responses compared in all K(K-1)/2
pairs cost K forwards, not K(K-1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.models.reward import RewardBatch, pack_reward_sequences, pad_encoder_sequences, score_sequences
from alignlab.models.reward_io import save_reward_model
from alignlab.train import reward_data  # looked up at call time: bench/rm_vs_trl.py wraps its setup
from alignlab.train.epochs import EpochBatches, chunks
from alignlab.train.reward_config import OBJECTIVES, Item, MemberScores, ObjectiveSpec, RMConfig
from alignlab.train.session import close_session, run_training

__all__ = ["OBJECTIVES", "Item", "ObjectiveSpec", "RMConfig", "RewardAlgorithm", "train_reward_model"]


@dataclass
class RMBatch:
    indices: torch.Tensor  # (B,)
    rewards_input: RewardBatch  # the batch's distinct sequences
    targets: torch.Tensor  # (B, ...)
    masks: torch.Tensor | None
    weights: torch.Tensor  # (B,)
    sequence_index: torch.Tensor  # (B, R): the sequence of each example's response r (pairs: chosen, rejected)


def make_batch(items: list[Item], indices: list[int], kind: str, pad_token_id: int) -> RMBatch:
    """The micro-batch of `items[indices]`: each distinct (prompt, response) encoded once, whichever
    examples share it (the pairs of one prompt's responses, say); `sequence_index` maps back."""
    chosen = [items[i] for i in indices]
    seq_of: dict[tuple, int] = {}
    by_prompt: dict[tuple, list[tuple[list, int]]] = {}
    index = []
    for it in chosen:
        prompt = tuple(it.prompt_ids)
        row = []
        for r in it.responses:
            key = (prompt, tuple(r))
            if key not in seq_of:
                seq_of[key] = len(seq_of)
                by_prompt.setdefault(prompt, []).append((r, seq_of[key]))
            row.append(seq_of[key])
        index.append(row)
    if kind == "causal":
        blocks = [(list(prompt), responses) for prompt, responses in by_prompt.items()]
        batch = pack_reward_sequences(blocks, len(seq_of), pad_token_id=pad_token_id)
    else:
        batch = pad_encoder_sequences([(list(p), list(r)) for p, r in seq_of], pad_token_id=pad_token_id)
    masks = torch.stack([it.mask for it in chosen]) if chosen[0].mask is not None else None
    return RMBatch(torch.tensor(indices), batch, torch.stack([it.target for it in chosen]), masks,
                   torch.tensor([it.weight for it in chosen]), torch.tensor(index))


def prompt_groups(items: list[Item], order: list[int]) -> list[list[int]]:
    """`order`'s item indices grouped by prompt (token ids), groups in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i in order:
        groups.setdefault(tuple(items[i].prompt_ids), []).append(i)
    return list(groups.values())


class RewardAlgorithm:
    progress_keys = ("accuracy",)

    def __init__(self, cfg: RMConfig, model, train_items: list[Item], eval_items: list[Item], pad_token_id: int):
        self.cfg, self.model, self.spec = cfg, model, cfg.spec
        self.train_items, self.eval_items = train_items, eval_items
        self.pad_token_id = pad_token_id
        g = torch.Generator().manual_seed(cfg.seed + 17)
        K = cfg.ensemble
        # online bootstrap: every member sees each example Poisson(1) times (all 1 for K = 1; a
        # trained model's gate, shared by its members, sees every example once)
        self.bootstrap = torch.poisson(torch.ones(len(train_items), K), generator=g) if K > 1 else torch.ones(len(train_items), 1)
        self._epochs = EpochBatches(cfg.seed, len(train_items), self._batches)

    def _batches(self, order: list[int]) -> list[RMBatch]:
        bs = self.cfg.batch_size
        if self.cfg.group_by_prompt:  # batch_size whole prompts (in shuffled order) per micro-batch
            groups = prompt_groups(self.train_items, order)
            parts = [[i for grp in groups[j : j + bs] for i in grp] for j in range(0, len(groups), bs)]
        else:
            parts = chunks(order, bs)
        return [make_batch(self.train_items, part, self.model.kind, self.pad_token_id) for part in parts]

    def micro_batches(self, epoch: int) -> list[RMBatch]:
        return self._epochs(epoch)

    def examples_in(self, batch: RMBatch) -> int:
        """What the loss is normalised by: examples, or the objective's own count (ratings: rated
        entries), so that a step's loss is the objective's loss over all its micro-batches."""
        if self.spec.normaliser is not None:
            return self.spec.normaliser(batch.masks)
        return len(batch.indices)

    def _member_losses(self, model, batch: RMBatch, member: int | None = None):
        device = self.model.head_weight.device
        batch.rewards_input = batch.rewards_input.to(device)  # once per batch: its K member calls share it
        gate = self.spec.trains == "gate"
        out = model(batch.rewards_input, member=member, with_gate=gate)
        rewards, attrs = out[0], out[1]  # (S, K), (S, K, A); K = 1 with member
        seq = batch.sequence_index.to(device)
        first, second = seq[:, 0], seq[:, -1]  # (B,): chosen, rejected (or the one response, twice)
        targets = batch.targets.to(device)
        masks = batch.masks.to(device) if batch.masks is not None else None
        per_member, metrics = [], {}
        K = rewards.shape[1]
        for k in range(K):
            scores = MemberScores(rewards[first, k], rewards[second, k], attrs[first, k], attrs[second, k], targets,
                                  masks)
            if gate:
                scores.first_gate, scores.second_gate = out[2][first], out[2][second]
                scores.log_beta = self.model.gate_log_beta
            loss, m = self.spec.loss(scores, self.cfg)
            per_member.append(loss)
            for name, v in m.items():
                metrics[name] = metrics.get(name, 0.0) + v / K
        return torch.stack(per_member, dim=1), rewards, metrics  # (B, K)

    def parts(self, batch: RMBatch) -> int:
        """LoRA members: one loss part per member, each back-propagated before the next member's
        forward, so that one member's activations are held at a time (the sum of the parts is the
        loss of all members at once, and so is the gradient). Heads share one forward: one part."""
        return self.cfg.ensemble if self.cfg.lora_members else 1

    def loss(self, scorer, batch: RMBatch, part: int | None = None):
        """Per-example loss, the mean over members of each member's bootstrap-weighted loss; with
        `part` k, member k's share of it (its loss / K) and metrics."""
        losses, _, metrics = self._member_losses(scorer, batch, member=part)
        cols = slice(None) if part is None else slice(part, part + 1)
        w = self.bootstrap[batch.indices][:, cols].to(losses.device) * batch.weights[:, None].to(losses.device)
        if part is None:
            return (losses * w).mean(dim=1), metrics
        K = self.cfg.ensemble
        return (losses * w)[:, 0] / K, {k: v / K for k, v in metrics.items()}

    def evaluate(self, scorer) -> dict[str, float]:
        if not self.eval_items:
            return {}
        totals, n = {}, 0
        for start in range(0, len(self.eval_items), self.cfg.batch_size):
            idx = list(range(start, min(start + self.cfg.batch_size, len(self.eval_items))))
            batch = make_batch(self.eval_items, idx, self.model.kind, self.pad_token_id)
            losses, _, metrics = self._member_losses(scorer, batch)
            count = self.examples_in(batch)
            totals["loss"] = totals.get("loss", 0.0) + float(losses.mean(1).sum())
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) * count
            n += count
        return {k: v / max(n, 1) for k, v in totals.items()}


@torch.no_grad()
def center_rewards(model, items: list[Item], pad_token_id: int, *, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Set `model.reward_offset` to each member's mean attribute reward over the distinct
    sequences (prompt, response) of `items`, so that on those responses every member's rewards
    average 0: r'_k(x, y) = r_k(x, y) - mean_{(x', y') in D} r_k(x', y'). Bradley-Terry training
    leaves that constant arbitrary per member (the loss sees only differences), and ensemble
    aggregations (min, variance) compare members at the same response, so they need one zero.
    Returns the (K, A) offsets."""
    seqs = list(dict.fromkeys((tuple(it.prompt_ids), tuple(r)) for it in items for r in it.responses))
    was_training = model.training
    model.eval()
    model.reward_offset.zero_()
    _, attrs = score_sequences(model, seqs, pad_token_id=pad_token_id, batch_size=batch_size,
                               progress="centering rewards" if progress else "")
    model.reward_offset.copy_(attrs.double().mean(0).to(model.reward_offset))
    model.train(was_training)
    return model.reward_offset.detach().cpu().clone()


def train_reward_model(cfg: RMConfig, *, train_records=None, eval_records=None, dry_run: bool = False):
    """Python API: train a reward model per `cfg`; returns the session (session.final_dir holds it)."""
    session, items = reward_data.prepare_reward_session(cfg, train_records=train_records, eval_records=eval_records,
                                                        dry_run=dry_run)
    if session.dry_run_text is not None:
        return session
    algorithm = RewardAlgorithm(cfg, session.model, items["train"], items["eval"], session.pad_token_id)

    def save():
        if cfg.spec.trains == "gate":
            session.model.gate_trained = True  # from now on scoring without a direction mixes by the gate
        if cfg.spec.center and cfg.center_rewards and items["train"]:
            offsets = center_rewards(session.model, items["train"], session.pad_token_id, progress=cfg.progress)
            session.summary["reward_offset"] = offsets.tolist()
        return save_reward_model(session.model, session.tokenizer, session.run_dir / "final", objective=cfg.objective)

    run_training(session, algorithm, session.model, session.model, save=save)
    return close_session(session)
