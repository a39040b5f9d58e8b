"""Row parsers: one per feedback format, chosen from one table (`FORMATS`) by `detect_format`.

A parser turns one row (a dict whose keys were already renamed to alignlab's field names by the
user's `columns` mapping) into one record, or raises `RowError` naming the field. The loader adds
the file and line. See docs/data.md for each format with an example row.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from alignlab.data.records import (
    BinaryRecord,
    CritiqueRecord,
    Message,
    PairwiseRecord,
    Prompt,
    RankingRecord,
    RatingRecord,
)

_MISSING = object()


class RowError(Exception):
    """One invalid row. `field` is the alignlab field name (the loader shows the user's column);
    `reason` is the short category counted as "skipped invalid: <reason>"."""

    def __init__(self, field: str | None, reason: str, detail: str):
        super().__init__(detail)
        self.field, self.reason, self.detail = field, reason, detail


class Row:
    """A row with alignlab field names, remembering which fields a parser used (the rest become
    `meta`) and the user's column names (for messages)."""

    def __init__(self, data: dict[str, Any], columns: dict[str, str] | None = None):
        self.data, self.columns, self.used = data, columns or {}, set()
        self.aliases: dict[str, tuple[str, ...]] = {}

    def name(self, field: str) -> str:
        return self.columns.get(field, field)

    def has(self, field: str) -> bool:
        return self.data.get(field) is not None

    def get(self, field: str, default: Any = _MISSING) -> Any:
        self.used.add(field)
        value = self.data.get(field)
        if value is None:
            if default is _MISSING:
                keys = ", ".join(map(str, self.data)) or "none"
                alias = "".join(f" (or '{self.name(a)}')" for a in self.aliases.get(field, ()))
                raise RowError(field, f"missing field '{self.name(field)}'",
                               f"required field is missing{alias} (the row has: {keys})")
            return default
        return value

    def first_of(self, *fields: str) -> str:
        """The first of `fields` present in the row (for aliases like response/completion)."""
        found = next((f for f in fields if self.has(f)), None)
        if found is None:
            self.aliases[fields[0]] = fields[1:]
        return found or fields[0]

    def meta(self) -> dict[str, Any]:
        return {k: v for k, v in self.data.items() if k not in self.used and v is not None}


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def wrong_type(row: Row, field: str, expected: str, value: Any) -> RowError:
    return RowError(field, f"wrong type in '{row.name(field)}'", f"expected {expected}, got {_type_name(value)}")


def text(row: Row, field: str, *, kind: str = "response") -> str:
    """A required non-empty string; `kind` names the emptiness reason ("prompt", "response")."""
    value = row.get(field)
    if not isinstance(value, str):
        raise wrong_type(row, field, "a string", value)
    if not value.strip():
        raise RowError(field, f"empty {kind}", f"empty {kind}")
    return value


def _messages(row: Row, field: str, value: Any) -> list[Message]:
    if isinstance(value, dict):
        value = [value]
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            got = _type_name(m) if not isinstance(m, dict) else "{" + ", ".join(
                f"{k}: {_type_name(v)}" for k, v in m.items()) + "}"
            raise RowError(field, f"wrong type in '{row.name(field)}'",
                           f"message {i}: expected {{'role': str, 'content': str}}, got {got}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def text_or_messages(row: Row, field: str) -> str | list[Message]:
    value = row.get(field)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return _messages(row, field, value)
    raise wrong_type(row, field, "a string or a message list", value)


def prompt_of(row: Row, field: str = "prompt") -> Prompt:
    value = text_or_messages(row, field)
    empty = not value.strip() if isinstance(value, str) else not any(m["content"].strip() for m in value)
    if empty:
        raise RowError(field, "empty prompt", "empty prompt")
    return value


def number(row: Row, field: str, value: Any, *, what: str = "a number") -> float:
    """A finite number; numeric strings ("4", "3.5") are accepted, as UltraFeedback stores them."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise RowError(field, f"bad value in '{row.name(field)}'", f"expected {what}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise wrong_type(row, field, what, value)
    if not math.isfinite(value):
        raise RowError(field, f"bad value in '{row.name(field)}'", f"expected a finite number, got {value}")
    return float(value)


def annotator_of(row: Row) -> str | None:
    field = row.first_of("annotator", "annotator_id")
    value = row.get(field, None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise wrong_type(row, field, "a string or an integer id", value)
    return str(value)


def _nonempty_response(row: Row, field: str, value: str) -> str:
    if not value.strip():
        raise RowError(field, "empty response", "empty response")
    return value


# --- pairwise ---------------------------------------------------------------------------------


def _reply_after(row: Row, field: str, prompt: Prompt, messages: list[Message]) -> str:
    """The assistant reply in `messages`, which may repeat the prompt turns first."""
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if messages[: len(turns)] == turns:
        messages = messages[len(turns):]
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = [m["role"] for m in messages]
        raise RowError(field, f"bad value in '{row.name(field)}'",
                       f"expected one assistant message after the prompt, got roles {roles}")
    return messages[0]["content"]


def split_implicit_prompt(row: Row, chosen: list[Message], rejected: list[Message]) -> tuple[list[Message], str, str]:
    """TRL's "conversational implicit prompt": both lists hold the whole conversation. The longest
    common prefix (leaving each list its last turn) is the prompt; each rest is one assistant turn."""
    k = 0
    while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
        k += 1
    if k == 0:
        raise RowError("chosen", "empty prompt", "chosen and rejected share no prompt turns (and no 'prompt' field)")
    prompt = chosen[:k]
    return prompt, _reply_after(row, "chosen", prompt, chosen), _reply_after(row, "rejected", prompt, rejected)


def parse_pairwise(row: Row) -> PairwiseRecord:
    chosen, rejected = text_or_messages(row, "chosen"), text_or_messages(row, "rejected")
    if row.has("prompt"):
        prompt = prompt_of(row)
        chosen = chosen if isinstance(chosen, str) else _reply_after(row, "chosen", prompt, chosen)
        rejected = rejected if isinstance(rejected, str) else _reply_after(row, "rejected", prompt, rejected)
    elif isinstance(chosen, list) and isinstance(rejected, list):
        prompt, chosen, rejected = split_implicit_prompt(row, chosen, rejected)
        if not any(m["content"].strip() for m in prompt):
            raise RowError("chosen", "empty prompt", "empty prompt")
    else:
        row.get("prompt")  # raises: missing field 'prompt'
    margin = row.get("margin", None)
    return PairwiseRecord(
        prompt=prompt,
        chosen=_nonempty_response(row, "chosen", chosen),
        rejected=_nonempty_response(row, "rejected", rejected),
        margin=None if margin is None else number(row, "margin", margin),
        annotator=annotator_of(row),
    )


# --- Anthropic HH transcripts -----------------------------------------------------------------

HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_messages(transcript: str) -> list[Message]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> [user: hi, assistant: hello]."""
    if transcript.startswith(("Human:", "Assistant:")):
        transcript = "\n\n" + transcript
    parts = _HH_TURN.split(transcript)
    if parts[0].strip() or len(parts) < 3:
        raise ValueError("not an HH transcript: it must start with '\\n\\nHuman:'")
    return [{"role": _HH_ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]


def _strip_one_space(s: str) -> str:
    return s[1:] if s.startswith(" ") else s


def parse_hh(row: Row) -> PairwiseRecord:
    chosen, rejected = text(row, "chosen"), text(row, "rejected")
    shared = len(os.path.commonprefix([chosen, rejected]))
    cut = chosen.rfind(HH_ASSISTANT, 0, shared)
    if cut < 0:
        raise RowError("rejected", "HH transcripts share no prompt",
                       "chosen and rejected transcripts share no prompt "
                       "(no common text up to an '\\n\\nAssistant:' turn)")
    try:
        prompt = hh_messages(chosen[:cut])
    except ValueError as exc:
        raise RowError("chosen", f"bad value in '{row.name('chosen')}'", str(exc)) from None
    if not any(m["content"] for m in prompt):
        raise RowError("chosen", "empty prompt", "empty prompt")
    start = cut + len(HH_ASSISTANT)
    return PairwiseRecord(
        prompt=prompt,
        chosen=_nonempty_response(row, "chosen", _strip_one_space(chosen[start:])),
        rejected=_nonempty_response(row, "rejected", _strip_one_space(rejected[start:])),
        annotator=annotator_of(row),
    )


# --- ratings (UltraFeedback) -------------------------------------------------------------------

_SCORE_KEYS = ("overall_score", "score", "rating")


def _rating(row: Row, field: str, value: Any) -> dict[str, float]:
    if isinstance(value, dict):
        out = {str(k): number(row, field, v, what="a numeric rating") for k, v in value.items()}
        if not out:
            raise RowError(field, f"bad value in '{row.name(field)}'", "empty ratings")
        return out
    return {"overall": number(row, field, value, what="a numeric score")}


def _completion(row: Row, i: int, item: Any) -> tuple[str, dict[str, float]]:
    field = "completions"
    if not isinstance(item, dict):
        raise wrong_type(row, field, f"completion {i} to be an object", item)
    key = "response" if item.get("response") is not None else "text"
    response = item.get(key)
    if not isinstance(response, str):
        detail = f"completion {i}: missing 'response' or 'text'" if response is None else \
            f"completion {i}: expected a string response, got {_type_name(response)}"
        raise RowError(field, f"wrong type in '{row.name(field)}'", detail)
    if not response.strip():
        raise RowError(field, "empty response", f"completion {i}: empty response")
    rating = _rating(row, field, item["ratings"]) if isinstance(item.get("ratings"), dict) else {}
    score_key = next((k for k in _SCORE_KEYS if item.get(k) is not None), None)
    if score_key is not None:
        rating["overall"] = number(row, field, item[score_key], what=f"a numeric '{score_key}'")
    if not rating:
        raise RowError(field, f"missing field '{row.name(field)}'",
                       f"completion {i}: no score (one of {', '.join(_SCORE_KEYS)}, or ratings: {{attr: value}})")
    return response, rating


def _string_list(row: Row, field: str) -> list[str]:
    value = row.get(field)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise wrong_type(row, field, "a list of strings", value if not isinstance(value, (list, tuple)) else
                         next(v for v in value if not isinstance(v, str)))
    for v in value:
        _nonempty_response(row, field, v)
    return list(value)


def parse_ratings(row: Row) -> RatingRecord:
    prompt = prompt_of(row, row.first_of("prompt", "instruction"))
    if row.has("completions"):
        items = row.get("completions")
        if not isinstance(items, (list, tuple)):
            raise wrong_type(row, "completions", "a list of completions", items)
        pairs = [_completion(row, i, item) for i, item in enumerate(items)]
        responses, ratings = [p[0] for p in pairs], [p[1] for p in pairs]
    else:
        responses, scores = _string_list(row, "responses"), row.get("scores")
        if not isinstance(scores, (list, tuple)) or len(scores) != len(responses):
            raise RowError("scores", f"bad value in '{row.name('scores')}'",
                           f"expected a list of {len(responses)} scores (one per response), got {_type_name(scores)}"
                           + (f" of length {len(scores)}" if isinstance(scores, (list, tuple)) else ""))
        ratings = [_rating(row, "scores", s) for s in scores]
    return RatingRecord(prompt=prompt, responses=responses, ratings=ratings, annotator=annotator_of(row))


# --- rankings, binary, critique ----------------------------------------------------------------


def parse_ranking(row: Row) -> RankingRecord:
    prompt = prompt_of(row)
    ranking = row.get("ranking", None)
    if row.has("responses") and ranking is not None:
        responses = _string_list(row, "responses")
        if not isinstance(ranking, (list, tuple)) or len(ranking) != len(responses):
            raise wrong_type(row, "ranking", f"a list of {len(responses)} ranks (1 = best)", ranking)
        ranks = [number(row, "ranking", r, what="a rank") for r in ranking]
        if len(set(ranks)) != len(ranks):
            raise RowError("ranking", f"bad value in '{row.name('ranking')}'",
                           "tied ranks cannot be expressed as a ranking; give scores (ratings) instead")
        responses = [r for _, r in sorted(zip(ranks, responses))]
    else:
        responses = _string_list(row, "ranking" if ranking is not None else "responses")
    return RankingRecord(prompt=prompt, responses=responses, annotator=annotator_of(row))


_LABELS = {
    True: ("1", "true", "yes", "good", "positive", "desirable", "thumbs_up", "thumbsup", "up", "like", "+",
           "\U0001f44d"),
    False: ("0", "false", "no", "bad", "negative", "undesirable", "thumbs_down", "thumbsdown", "down", "dislike",
            "-", "\U0001f44e"),
}


def label_of(row: Row) -> bool:
    value = row.get("label")
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        key = value.strip().lower().replace(" ", "_").replace("-", "_") if len(value.strip()) > 1 else value.strip()
        for desirable, names in _LABELS.items():
            if key in names:
                return desirable
    raise RowError("label", f"bad value in '{row.name('label')}'",
                   "expected true/false, 1/0, good/bad, thumbs_up/thumbs_down, desirable/undesirable "
                   f"(or yes/no, positive/negative, up/down), got {value!r}")


def parse_binary(row: Row) -> BinaryRecord:
    prompt = prompt_of(row)
    return BinaryRecord(prompt=prompt, response=text(row, row.first_of("completion", "response")),
                        desirable=label_of(row), annotator=annotator_of(row))


def parse_critique(row: Row) -> CritiqueRecord:
    prompt = prompt_of(row)
    response = text(row, row.first_of("response", "completion"))
    critique = text(row, "critique", kind="critique")
    refinement = row.get("refinement", None)
    if refinement is not None and not isinstance(refinement, str):
        raise wrong_type(row, "refinement", "a string", refinement)
    return CritiqueRecord(prompt=prompt, response=response, critique=critique,
                          refinement=refinement if refinement and refinement.strip() else None,
                          annotator=annotator_of(row))


# --- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    name: str
    parse: Callable[[Row], Any]
    fields: str  # for messages: what a row of this format holds


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("pairwise", parse_pairwise, "prompt, chosen, rejected (strings or chat message lists)"),
    Format("hh", parse_hh, "chosen, rejected as full '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts"),
    Format("ultrafeedback", parse_ratings, "prompt|instruction + completions [{response, overall_score}], "
                                           "or responses + scores"),
    Format("ranking", parse_ranking, "prompt + responses (best first), or ranking"),
    Format("binary", parse_binary, "prompt, completion|response, label"),
    Format("critique", parse_critique, "prompt, response, critique[, refinement]"),
)}

# Every field name a parser reads: `columns` may only map these.
KNOWN_FIELDS = ("prompt", "instruction", "chosen", "rejected", "margin", "annotator", "annotator_id", "completions",
                "responses", "scores", "ranking", "response", "completion", "label", "critique", "refinement")


def detect_format(data: dict[str, Any]) -> str | None:
    """The format of a row from its keys (and, to tell HH transcripts from pairs, the values)."""
    keys = {k for k, v in data.items() if v is not None}
    if "completions" in keys or {"responses", "scores"} <= keys:
        return "ultrafeedback"
    if {"chosen", "rejected"} <= keys:
        chosen = data["chosen"]
        if "prompt" not in keys and isinstance(chosen, str) and HH_ASSISTANT in chosen:
            return "hh"
        return "pairwise"
    if "label" in keys:
        return "binary"
    if "critique" in keys:
        return "critique"
    if "responses" in keys or "ranking" in keys:
        return "ranking"
    return None
