"""The pairwise preference model: one scalar head f on a JOINT encoding of the prompt and both
responses (Think-RM / Pairwise-RL's pairwise reward models, in their discriminative form), made
antisymmetric by construction:

    logit(a ≻ b | x) = f([x, a, b]) − f([x, b, a]),    P(a ≻ b) = σ(logit)

so P(a ≻ b) + P(b ≻ a) = 1 whatever f is, trained or not. f is an ordinary alignlab reward model
(`alignlab.models.reward`) whose "response" is the two responses written into one text
(`joint_response`); training it with the Bradley-Terry loss on (joint(chosen, rejected),
joint(rejected, chosen)) is exactly maximum likelihood of P(chosen ≻ rejected) above, which is
what `alignlab train pm` (the reward-model trainer with objective `pm`) does.

Exact in floating point too: a pair is always scored as (joint(u, v), joint(v, u)) with (u, v)
the pair in a fixed order, so that prefer(a, b) and prefer(b, a) run the same forward passes and
their logits are exact negatives; `antisymmetric_sigmoid` then makes the two probabilities sum
to exactly 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from alignlab.preferences.base import check_lengths, check_probabilities

JOINT_FORMAT = "Response A:\n{first}\n\nResponse B:\n{second}"


def joint_response(first: str, second: str) -> str:
    """The one text the preference model reads for "is `first` better than `second`"."""
    return JOINT_FORMAT.format(first=first, second=second)


def antisymmetric_sigmoid(logits: Tensor) -> Tensor:
    """σ(z), computed as 1 − σ(−z) for z < 0: then σ(z) + σ(−z) == 1 exactly in floating point
    (for z ≥ 0, σ(z) is in [½, 1], where 1 − σ(z) is exact)."""
    return torch.where(logits >= 0, torch.sigmoid(logits), 1 - torch.sigmoid(-logits))


class PairwisePreference:
    """A trained pairwise preference model (a folder from `alignlab train pm`) as a preference
    source. `max_length` bounds prompt + joint response in tokens (longer ones are cut as reward
    scoring cuts them: the prompt's end, the response's start)."""

    def __init__(self, path, *, batch_size: int = 16, max_length: int = 1024, device: str | None = None):
        from alignlab.rewards.model import RewardModelSource

        self.scorer = RewardModelSource(path, batch_size=batch_size, max_length=max_length, device=device,
                                        preference_model=True)
        if self.scorer.meta.get("objective") != "pm":
            raise ValueError(f"{path} is a reward model (objective {self.scorer.meta.get('objective')!r}), not a "
                             "pairwise preference model from `alignlab train pm`; use it as rm:DIR")
        self.name = f"pm:{path}"

    def logits(self, prompts: Sequence, a: Sequence[str], b: Sequence[str]) -> Tensor:
        """(N,) f([x, a, b]) − f([x, b, a]), each pair scored in one fixed order (module docstring)."""
        n = check_lengths(prompts, a, b)
        swap = torch.tensor([x > y for x, y in zip(a, b)], dtype=torch.bool)  # canonical order: u <= v
        u = [y if s else x for x, y, s in zip(a, b, swap.tolist())]
        v = [x if s else y for x, y, s in zip(a, b, swap.tolist())]
        joint = [joint_response(x, y) for x, y in zip(u, v)] + [joint_response(y, x) for x, y in zip(u, v)]
        scores = self.scorer.score(list(prompts) * 2, joint).double()  # (2N,)
        logit_uv = scores[:n] - scores[n:]
        return torch.where(swap, -logit_uv, logit_uv)

    @torch.no_grad()
    def prefer(self, prompts: Sequence, a: Sequence[str], b: Sequence[str]) -> Tensor:
        n = check_lengths(prompts, a, b)
        if n == 0:
            return torch.zeros(0)
        return check_probabilities(antisymmetric_sigmoid(self.logits(prompts, a, b)), n, self.name)


PM_OPTIONS = ("batch_size", "max_length")


def load_pairwise_preference(path: str, options: dict) -> PairwisePreference:
    """`pm:DIR` -> PairwisePreference(DIR); options batch_size, max_length (`temperature` 1 and
    `seed` are accepted and unused: the model's probabilities are its own)."""
    options = dict(options)
    options.pop("seed", None)
    if options.pop("temperature", 1.0) != 1.0:
        raise ValueError("a pairwise preference model's probabilities are its own: no temperature")
    unknown = sorted(set(options) - set(PM_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) for pm:{path}: {', '.join(unknown)} (known: {', '.join(PM_OPTIONS)})")
    if not path:
        raise ValueError("preference source 'pm:DIR' needs the folder of a model from `alignlab train pm`")
    return PairwisePreference(path, **options)
