"""Judging a rollout's rows against each other: the preference source given as `judge`, or, with
none, the rows' rewards through Bradley-Terry. Shared by online DPO (which keeps one judged pair
a prompt) and self-play (whose reward is each sample's win rate in its group)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from alignlab.losses.nash import self_play_rewards
from alignlab.losses.online_preference import round_robin_probabilities
from alignlab.preferences.base import check_probabilities


def row_judge(judge, prompts: Sequence, texts: Sequence[str], rewards: torch.Tensor, temperature: float
              ) -> Callable[[list[int], list[int]], torch.Tensor]:
    """prefer(first_rows, second_rows) -> P(first ≻ second) per pair of row indices: from
    `judge.prefer`, or with judge None from the rewards, σ((r_first − r_second) / temperature)."""

    def prefer(first: list[int], second: list[int]) -> torch.Tensor:
        if judge is None:
            return torch.sigmoid((rewards[first] - rewards[second]) / temperature)
        p = judge.prefer([prompts[i] for i in first], [texts[i] for i in first], [texts[i] for i in second])
        return check_probabilities(p, len(first), getattr(judge, "name", "judge"))

    return prefer


def group_win_rates(prefer: Callable[[list[int], list[int]], torch.Tensor], n: int, groups: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-play's reward (SPO, Swamy et al. 2024): each row's win rate against the other n − 1
    rows of its group, r(y_i) = 1/(n−1) Σ_{j≠i} P(y_i ≻ y_j), rows group-major. Returns the rates
    (groups · n,) and the judged (groups, n, n) matrix."""
    probabilities = round_robin_probabilities(prefer, n, groups)
    return self_play_rewards(probabilities).reshape(-1), probabilities


def opponent_win_rates(judge, prompts: Sequence, texts: Sequence[str], opponent_texts: Sequence[str],
                       rewards: torch.Tensor, opponent_rewards: torch.Tensor, temperature: float) -> torch.Tensor:
    """Nash-MD's reward (Munos et al. 2023): P(y_i ≻ y'_i) of each row's sample against its own
    opponent, (B,), judged in one batched call (with no judge, from the two rewards through
    Bradley-Terry)."""
    B = len(texts)
    if len(opponent_texts) != B:
        raise ValueError(f"opponent_win_rates: {len(opponent_texts)} opponents for {B} samples")
    prefer = row_judge(judge, list(prompts) * 2, list(texts) + list(opponent_texts),
                       torch.cat([rewards, opponent_rewards]), temperature)
    return prefer(list(range(B)), list(range(B, 2 * B)))
