"""A trained reward model (or ensemble, or multi-objective model) as a reward source."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from alignlab.data.tokenize import fit_to_length, prompt_encoder
from alignlab.models.reward import score_sequences
from alignlab.models.reward_io import load_reward_model, reward_pad_token_id
from alignlab.rewards.aggregate import aggregate


def direction_vector(direction, attributes: Sequence[str]) -> list[float]:
    """A DPA direction as one weight per attribute, from a list of numbers (in attribute order), a
    mapping {attribute: weight} (unnamed attributes weigh 0), or their text forms "0.8,0.2" and
    "helpful=0.8,concise=0.2" (as in the reward spec `rm:DIR@...`)."""
    if isinstance(direction, str):
        parts = [p.strip() for p in direction.split(",") if p.strip()]
        try:
            if parts and all("=" in p for p in parts):
                direction = {k.strip(): float(v) for k, v in (p.split("=", 1) for p in parts)}
            else:
                direction = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"direction {direction!r}: write numbers (0.8,0.2) or attribute=weight pairs") from None
    if isinstance(direction, dict):
        unknown = sorted(set(direction) - set(attributes))
        if unknown:
            raise ValueError(f"direction names unknown attribute(s) {unknown}; the model's are {list(attributes)}")
        return [float(direction.get(a, 0.0)) for a in attributes]
    return [float(x) for x in direction]


class _Members:
    """Reading a source's `outputs` (N, K member rewards; N, K, A attribute rewards) as scores."""

    how: str
    uwo_coef: float

    def outputs(self, prompts, responses) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def member_scores(self, prompts, responses) -> Tensor:
        """(K, N)."""
        return self.outputs(prompts, responses)[0].T

    def score_attributes(self, prompts, responses) -> Tensor:
        """(N, A) attribute rewards, averaged over members."""
        return self.outputs(prompts, responses)[1].mean(1)

    def score(self, prompts, responses) -> Tensor:
        return aggregate(self.member_scores(prompts, responses), self.how, uwo_coef=self.uwo_coef)


class RewardModelSource(_Members):
    """`score(prompts, responses)` with a model saved by `alignlab train rm`.

    how: mean | wco | uwo — how an ensemble's K members are combined (Coste et al.);
    direction: optional weights over the attributes of a multi-objective model (DPA), replacing
    its gate. Responses longer than `max_length` tokens (with their prompt) are cut by the rule
    reward-model training uses (`alignlab.data.tokenize.fit_to_length`: the prompt's end, the
    response's start); the count is in `self.truncated`. A pairwise preference model's folder
    (`alignlab train pm`) scores joint texts, not responses: it is refused unless
    `preference_model` (as `alignlab.preferences.pairwise` reads it)."""

    def __init__(self, path, *, how: str = "mean", uwo_coef: float = 0.5, direction=None, batch_size: int = 16,
                 max_length: int = 512, progress: bool = False, device: str | None = None,
                 preference_model: bool = False):
        self.model, self.tokenizer, self.meta = load_reward_model(path)
        if self.meta.get("objective") == "pm" and not preference_model:
            # its score is f(x, [a, b]) of a joint text, not a reward of one response
            raise ValueError(f"{path} is a pairwise preference model (`alignlab train pm`), not a reward model; "
                             "use it as the preference source pm:DIR")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        if direction is not None:
            self.model.set_direction(direction_vector(direction, self.model.attributes))
        aggregate(torch.zeros(1, 1), how)
        self.how, self.uwo_coef, self.batch_size, self.max_length = how, uwo_coef, batch_size, max_length
        self.progress = progress
        self.pad_token_id = reward_pad_token_id(self.tokenizer)
        self.name = f"rm:{path}"
        self.truncated = 0

    def _encode(self, prompts, responses) -> list[tuple[list, list]]:
        encoder, out = prompt_encoder(self.tokenizer), []
        for prompt, response in zip(prompts, responses):
            p, r = encoder.prompt(prompt), encoder.response(response)
            if len(p) + len(r) > self.max_length:
                self.truncated += 1
                p, (r,), reasons = fit_to_length(encoder, p, [r], self.max_length)
                if any(x.startswith("dropped") for x in reasons):  # no room left for any response token
                    raise ValueError(f"max_length {self.max_length} leaves no room for a response after the prompt's "
                                     f"sequence-start tokens; raise max_length")
            out.append((p, r))
        return out

    def outputs(self, prompts: Sequence, responses: Sequence[str]) -> tuple[Tensor, Tensor]:
        """(N, K) member rewards and (N, K, A) attribute rewards."""
        if len(prompts) != len(responses):
            raise ValueError(f"score() needs one prompt per response, got {len(prompts)} and {len(responses)}")
        return score_sequences(self.model, self._encode(prompts, responses), pad_token_id=self.pad_token_id,
                               batch_size=self.batch_size, progress="scoring" if self.progress else "",
                               device=self.device)



class RewardEnsembleSource(_Members):
    """Separately trained reward models read as one ensemble: e.g. the same labels fitted from
    several seeds, as in Coste et al. (2023), whose members differ more than heads on one frozen
    backbone do. `member_scores` stacks every model's members; `score` aggregates them by `how`
    (mean | wco | uwo). Members are compared on one scale, so each model should be centered on its
    training responses (`train rm` does this by default: `center_rewards`)."""

    def __init__(self, paths: Sequence, *, how: str = "mean", uwo_coef: float = 0.5, **kwargs):
        if not paths:
            raise ValueError("a reward ensemble needs at least one model folder")
        aggregate(torch.zeros(1, 1), how)
        self.sources = [RewardModelSource(p, **kwargs) for p in paths]
        self.how, self.uwo_coef = how, uwo_coef
        self.name = "rm:" + "+".join(str(p) for p in paths)

    @property
    def truncated(self) -> int:
        return sum(s.truncated for s in self.sources)

    @property
    def tokenizer(self):
        return self.sources[0].tokenizer

    def outputs(self, prompts, responses) -> tuple[Tensor, Tensor]:
        """(N, K) member rewards and (N, K, A) attribute rewards of every model's members, in order."""
        parts = [s.outputs(prompts, responses) for s in self.sources]
        if len({a.shape[-1] for _, a in parts}) > 1:
            raise ValueError(f"{self.name}: the models score different numbers of attributes")
        return torch.cat([r for r, _ in parts], dim=1), torch.cat([a for _, a in parts], dim=1)



def load_reward_source(path, *, how: str = "mean", direction=None, **kwargs):
    """A saved reward model (`DIR`) or several read as one ensemble (`DIR1+DIR2+...`)."""
    path = str(path)
    if "+" not in path:
        return RewardModelSource(path, how=how, direction=direction, **kwargs)
    if direction is not None:
        raise ValueError(f"{path}: a direction reads one multi-objective model, not an ensemble of several")
    return RewardEnsembleSource([p for p in path.split("+") if p], how=how, **kwargs)
