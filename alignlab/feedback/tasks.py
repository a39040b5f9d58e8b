"""The four task types, from one table (`TASKS`): what a vote on each must hold, how it is stored,
its label for agreement, and the training record it becomes.

Annotators see responses in a shuffled order and name them by screen letter (A, B, ...); a vote
is stored in terms of the item's own response indices, with the order shown kept beside it.
Pairwise votes record the choice (a, b, tie, both_bad), a strength on Llama 2's four-level
scale (0 negligibly/unsure, 1 slightly, 2 better, 3 significantly better; arXiv:2307.09288
§3.2.1, exported as the pair's `margin`), an optional critique, per-attribute scores
(UltraFeedback, arXiv:2310.01377) and highlighted spans (Fine-Grained RLHF, arXiv:2306.01693).
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Any, Callable

from alignlab.data.records import BinaryRecord, PairwiseRecord, RankingRecord, RatingRecord

STRENGTHS = {0: "negligibly better / unsure", 1: "slightly better", 2: "better", 3: "significantly better"}
PAIR_CHOICES = ("A", "B", "tie", "both_bad")
MAX_TEXT = 10_000


class VoteError(ValueError):
    """A vote that does not fit its task; the message names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def letters(n: int) -> list[str]:
    return list(string.ascii_uppercase[:n])


def _text(payload: dict, field: str) -> str | None:
    value = payload.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise VoteError(field, f"expected text, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise VoteError(field, f"at most {MAX_TEXT} characters, got {len(value)}")
    return value.strip()


def _score(field: str, value: Any, scale: int) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise VoteError(field, f"expected a number from 1 to {scale}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 1 <= value <= scale:
        raise VoteError(field, f"expected a number from 1 to {scale}, got {value!r}")
    return float(value)


def _shown(field: str, letter: Any, order: list[int]) -> int:
    """The item's response index behind a screen letter."""
    shown = letters(len(order))
    if letter not in shown:
        raise VoteError(field, f"expected one of {', '.join(shown)}, got {letter!r}")
    return order[shown.index(letter)]


def _unknown(payload: dict, allowed: set[str]) -> None:
    extra = sorted(set(payload) - allowed)
    if extra:
        raise VoteError(extra[0], f"unknown field (this task takes: {', '.join(sorted(allowed))})")


def _spans(payload: dict, responses: list[str], order: list[int]) -> list[dict]:
    spans = payload.get("spans") or []
    if not isinstance(spans, list):
        raise VoteError("spans", "expected a list of {response, start, end[, label]}")
    out = []
    for i, span in enumerate(spans):
        if not isinstance(span, dict):
            raise VoteError(f"spans[{i}]", "expected an object {response, start, end[, label]}")
        index = _shown(f"spans[{i}].response", span.get("response"), order)
        start, end, text = span.get("start"), span.get("end"), responses[index]
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
            raise VoteError(f"spans[{i}]", f"start and end must satisfy 0 <= start < end <= {len(text)}")
        label = span.get("label")
        out.append({"response": index, "start": start, "end": end, "text": text[start:end],
                    **({"label": str(label)[:100]} if label else {})})
    return out


def parse_pairwise(payload: dict, responses: list[str], order: list[int], project) -> dict:
    _unknown(payload, {"choice", "strength", "critique", "attributes", "spans"})
    choice = payload.get("choice")
    if choice not in PAIR_CHOICES:
        raise VoteError("choice", f"expected one of {', '.join(PAIR_CHOICES)}, got {choice!r}")
    if choice in ("A", "B"):
        choice = "ab"[_shown("choice", choice, order)]
    strength = payload.get("strength")
    if strength in ("", None):
        strength = None
    else:
        try:
            strength = int(strength)
        except (TypeError, ValueError):
            strength = -1
        if strength not in STRENGTHS:
            raise VoteError("strength", f"expected 0-3 ({'; '.join(f'{k} {v}' for k, v in STRENGTHS.items())}), "
                                        f"got {payload.get('strength')!r}")
        if choice in ("tie", "both_bad"):
            strength = None  # a strength says how much better the chosen one is: none was chosen
    attributes = {}
    for name, scores in (payload.get("attributes") or {}).items():
        if name not in project.attributes:
            raise VoteError(f"attributes.{name}", f"not an attribute of this project ({project.attributes or 'none'})")
        if not isinstance(scores, dict) or set(scores) - {"A", "B"}:
            raise VoteError(f"attributes.{name}", "expected {\"A\": score, \"B\": score}")
        per = [None, None]
        for letter, score in scores.items():
            per[_shown(f"attributes.{name}", letter, order)] = _score(f"attributes.{name}.{letter}", score, project.scale)
        attributes[name] = per
    return {"choice": choice, "strength": strength, "critique": _text(payload, "critique"),
            "attributes": attributes, "spans": _spans(payload, responses, order)}


def parse_ranking(payload: dict, responses: list[str], order: list[int], project) -> dict:
    _unknown(payload, {"ranking", "critique"})
    ranking = payload.get("ranking")
    shown = letters(len(order))
    if not isinstance(ranking, list) or sorted(map(str, ranking)) != shown:
        raise VoteError("ranking", f"expected every one of {', '.join(shown)} once, best first; got {ranking!r}")
    return {"ranking": [_shown("ranking", x, order) for x in ranking], "critique": _text(payload, "critique")}


def parse_rating(payload: dict, responses: list[str], order: list[int], project) -> dict:
    _unknown(payload, {"ratings", "critique"})
    names = project.attributes or ["overall"]
    ratings = payload.get("ratings")
    if not isinstance(ratings, dict) or set(ratings) != set(names):
        raise VoteError("ratings", f"expected a score for each of: {', '.join(names)}; got {ratings!r}"[:300])
    return {"ratings": {k: _score(f"ratings.{k}", ratings[k], project.scale) for k in names},
            "critique": _text(payload, "critique")}


def parse_thumbs(payload: dict, responses: list[str], order: list[int], project) -> dict:
    _unknown(payload, {"thumbs", "critique"})
    thumbs = payload.get("thumbs")
    if thumbs not in ("up", "down"):
        raise VoteError("thumbs", f"expected 'up' or 'down', got {thumbs!r}")
    return {"up": thumbs == "up", "critique": _text(payload, "critique")}


# --- export -------------------------------------------------------------------------------------


def _feedback_meta(item, vote, project) -> dict:
    extra = {k: v for k, v in vote.payload.items() if k in ("critique", "attributes", "spans") and v}
    meta = {"project": project.slug, "item": item.id, "vote": vote.id, "created_at": vote.created_at,
            "order": vote.order, **extra}
    if item.sources:
        meta["sources"] = item.sources
    return meta


def pairwise_record(item, vote, project, annotator: str):
    choice = vote.payload["choice"]
    if choice not in ("a", "b"):
        return None  # a tie or "both bad" names no chosen response: counted by the exporter
    chosen, rejected = (0, 1) if choice == "a" else (1, 0)
    strength = vote.payload.get("strength")
    return PairwiseRecord(prompt=item.prompt, chosen=item.responses[chosen], rejected=item.responses[rejected],
                          margin=None if strength is None else float(strength), annotator=annotator,
                          meta={"feedback": _feedback_meta(item, vote, project)})


def ranking_record(item, vote, project, annotator: str):
    return RankingRecord(prompt=item.prompt, responses=[item.responses[i] for i in vote.payload["ranking"]],
                         annotator=annotator, meta={"feedback": _feedback_meta(item, vote, project)})


def rating_record(item, vote, project, annotator: str):
    return RatingRecord(prompt=item.prompt, responses=list(item.responses), ratings=[dict(vote.payload["ratings"])],
                        annotator=annotator, meta={"feedback": _feedback_meta(item, vote, project)})


def thumbs_record(item, vote, project, annotator: str):
    return BinaryRecord(prompt=item.prompt, response=item.responses[0], desirable=vote.payload["up"],
                        annotator=annotator, meta={"feedback": _feedback_meta(item, vote, project)})


@dataclass(frozen=True)
class TaskType:
    name: str
    responses: str  # for messages: how many responses an item holds
    fits: Callable[[int], bool]
    parse: Callable[[dict, list, list, Any], dict]
    label: Callable[[dict], str]  # a nominal label for agreement
    record: Callable  # (item, vote, project, annotator) -> record or None


TASKS: dict[str, TaskType] = {t.name: t for t in (
    TaskType("pairwise", "exactly 2", lambda n: n == 2, parse_pairwise, lambda p: p["choice"], pairwise_record),
    TaskType("ranking", "2 or more", lambda n: n >= 2, parse_ranking,
             lambda p: ",".join(map(str, p["ranking"])), ranking_record),
    TaskType("rating", "exactly 1", lambda n: n == 1, parse_rating,
             lambda p: ",".join(f"{v:g}" for v in p["ratings"].values()), rating_record),
    TaskType("thumbs", "exactly 1", lambda n: n == 1, parse_thumbs, lambda p: "up" if p["up"] else "down",
             thumbs_record),
)}
