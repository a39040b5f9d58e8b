"""Labelled pairs as tensors of response features, and the single Bradley-Terry reward baseline.

Features: `task_features` are fixed, cheap features of a response text that the lab's gold
rewards are built from (VADER sentiment, its magnitude, word count and its square, exclamation
marks) plus a constant. They are the lab task's own features: the study compares how the methods
pool users' labels, not how well they learn features. A reward is linear in them: r(y) = w . phi(y).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from alignlab.data.records import PairwiseRecord
from alignlab.lab.sentiment import vader_compound
from alignlab.losses.reward import bradley_terry


def task_features(texts: Sequence[str]) -> Tensor:
    """(N, 5) float32: vader, |vader|, words / 10, (words / 10)^2, '!' count / 2."""
    vader = vader_compound(list(texts))
    words = torch.tensor([len(t.split()) / 10 for t in texts], dtype=torch.float32)
    bangs = torch.tensor([t.count("!") / 2 for t in texts], dtype=torch.float32)
    return torch.stack([vader, vader.abs(), words, words.pow(2), bangs], 1)


class EncoderFeatures:
    """texts -> (N, D) frozen sentence embeddings (module docstring); each distinct text is
    encoded once per instance and cached."""

    def __init__(self, model: str = "embedded-encoder", batch_size: int = 64, max_length: int = 128):
        from transformers import AutoModel, AutoTokenizer

        from alignlab.models.reward_io import resolve_backbone_path

        path = resolve_backbone_path(model)
        self.tokenizer, self.model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
        self.batch_size, self.max_length, self.cache = batch_size, max_length, {}

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        for i in range(0, len(new), self.batch_size):
            chunk = new[i:i + self.batch_size]
            batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state  # (B, T, H)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1) * hidden.shape[-1] ** 0.5
            self.cache.update(zip(chunk, pooled.float()))
        return torch.stack([self.cache[t] for t in texts])


@dataclass
class PairData:
    chosen: Tensor
    """(N, D) features of each pair's chosen response."""
    rejected: Tensor
    """(N, D) features of its rejected response."""
    user: Tensor
    """(N,) long index of the pair's user in `users`."""
    users: list[str]
    """User ids (the records' `annotator`), by index."""

    @property
    def n_users(self) -> int:
        return len(self.users)

    def select(self, rows: Tensor) -> "PairData":
        return PairData(self.chosen[rows], self.rejected[rows], self.user[rows], self.users)


def pair_data(records: Sequence[PairwiseRecord], users: Sequence[str], features=task_features) -> PairData:
    """Records -> PairData; every record must carry the id of one of `users` in `annotator`."""
    index = {u: i for i, u in enumerate(users)}
    missing = sorted({str(r.annotator) for r in records if r.annotator not in index})
    if missing:
        raise ValueError(f"pairs from unknown users (annotator ids): {', '.join(missing[:5])}")
    n = len(records)
    phi = features([r.chosen for r in records] + [r.rejected for r in records])
    return PairData(phi[:n], phi[n:], torch.tensor([index[r.annotator] for r in records], dtype=torch.long),
                    list(users))


def fit_linear_bt(chosen: Tensor, rejected: Tensor, weights: Tensor | None = None, *, l2: float = 1e-3,
                  max_iter: int = 200) -> Tensor:
    """(D,) weights w of the linear reward w . phi minimizing the (weighted) Bradley-Terry loss
    (alignlab.losses.reward.bradley_terry) + l2 ||w||^2, by L-BFGS (the problem is convex: this is
    ridge logistic regression on phi(y_c) - phi(y_r)). chosen/rejected: (N, D); weights: (N,)."""
    w = torch.zeros(chosen.shape[1], dtype=torch.float64, requires_grad=True)
    c, r = chosen.double(), rejected.double()
    pw = None if weights is None else weights.double()
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = bradley_terry(c @ w, r @ w, weights=pw)[0] + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float()


def preference_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor, user: Tensor, n_users: int) -> Tensor:
    """(U,) share of each user's pairs ranked as labelled (a tie counts 1/2); NaN for a user
    without pairs."""
    credit = (chosen_rewards > rejected_rewards).double() + 0.5 * (chosen_rewards == rejected_rewards).double()
    total = torch.zeros(n_users, dtype=torch.float64).index_add(0, user, credit)
    count = torch.zeros(n_users, dtype=torch.float64).index_add(0, user, torch.ones_like(credit))
    return total / count
