"""Feedback record types: one dataclass per kind of feedback in the literature.

A prompt is either plain text or a chat message list ``[{"role": ..., "content": ...}, ...]``;
responses are plain text (the assistant turn). Every record may carry the id of the annotator who
gave the feedback and free-form ``meta`` (source file, line, subset, ...), which later issues use
for personalized and pluralistic methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

Message = dict[str, str]
Prompt = Union[str, list[Message]]


@dataclass
class PairwiseRecord:
    """`chosen` preferred to `rejected` for `prompt`. `margin`: optional preference strength
    (e.g. a Likert gap or a rating difference), used by margin losses and strength weighting."""

    prompt: Prompt
    chosen: str
    rejected: str
    margin: float | None = None
    annotator: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RankingRecord:
    """`responses` ordered best first (ties are not expressible; use ratings for those)."""

    prompt: Prompt
    responses: list[str]
    annotator: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RatingRecord:
    """Pointwise scores of one or several responses to `prompt`: `ratings[i]` maps attribute
    names (e.g. "overall", "helpfulness") to the score of `responses[i]`."""

    prompt: Prompt
    responses: list[str]
    ratings: list[dict[str, float]]
    annotator: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class BinaryRecord:
    """Unpaired feedback: `response` was judged desirable (thumbs up) or not (KTO, RLUF)."""

    prompt: Prompt
    response: str
    desirable: bool
    annotator: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class CritiqueRecord:
    """Free-text feedback on a response, optionally with an improved response (ILF, CoH)."""

    prompt: Prompt
    response: str
    critique: str
    refinement: str | None = None
    annotator: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


Record = Union[PairwiseRecord, RankingRecord, RatingRecord, BinaryRecord, CritiqueRecord]


def prompt_messages(prompt: Prompt) -> list[Message]:
    """The prompt as a message list (plain text becomes one user turn)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
