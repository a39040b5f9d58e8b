"""Token ids of prompts and responses, and the encoded pairs a trainer packs.

The boundary rule. The prompt is encoded exactly as generation will see it: the tokenizer's chat
template with the generation prompt (for SmolLM2, `...<|im_start|>assistant\\n`; its template
also inserts a default system turn when the prompt has none). The response is tokenized on its own,
without special tokens, followed by the end-of-turn token the template closes an assistant turn
with (`<|im_end|>` for SmolLM2). So `prompt_ids + response_ids` is what a policy produces when it
generates after `prompt_ids` and stops: the `\\n` the template writes after `<|im_end|>` is turn
formatting that generation never emits, so it is not part of the response and is never scored.

Re-rendering the whole conversation with the template gives `prompt_ids + response_ids + ["\\n"]`
token for token, except when the response starts with two or more whitespace characters: a
byte-level BPE then merges them with the template's `\\n` (e.g. `"\\n" + "\\n\\nHi"` becomes one
`"\\n\\n"` token + `"\\n"`). We keep the prompt ids fixed, since those are what the policy is
conditioned on at generation time (tests/test_data_tokenize.py checks both properties).

Tokenizers without a chat template (BERT-like encoders for reward models): the prompt is plain
text (a message list becomes "role: content" lines) encoded with the tokenizer's own special
tokens (`[CLS] prompt [SEP]`); the response is its tokens + the tokenizer's closing token
(`[SEP]`), which is exactly BERT's pair encoding `[CLS] prompt [SEP] response [SEP]`.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

from alignlab.data.errors import DataError, record_where
from alignlab.data.records import PairwiseRecord, Prompt, prompt_messages
from alignlab.data.report import DataReport

TRUNCATION = ("error", "truncate", "drop")
PROMPT_CUT = "truncated: prompt start cut"
RESPONSE_CUT = "truncated: response end cut"
DROPPED_LONG = "dropped: longer than max_length"
DROPPED_NO_PROMPT = "dropped: prompt would be cut to nothing"
DROPPED_NO_RESPONSE = "dropped: no room left for the response"
SAME_AFTER_CUT = "chosen == rejected after truncation (kept; no preference signal)"
ENCODED = "encoded pairs"
_SENTINEL = "XALIGNLABSENTINELX"
_FALLBACK_TOKEN_CHARS = 64  # tokenizers without a vocabulary to measure


@dataclass
class EncodedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    margin: float | None = None
    index: int = 0  # position of the record in the list given to encode_pairs


def _ids(encoded: Any) -> list[int]:
    """The id list from whatever a tokenizer call returned (list, BatchEncoding, tensor)."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], (list, tuple)):
        encoded = encoded[0]
    return [int(i) for i in encoded]


def prompt_text(prompt: Prompt) -> str:
    """A prompt as plain text, for tokenizers without a chat template."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


class PromptEncoder:
    """What encoding needs to know about a tokenizer, worked out once: whether it has a chat
    template, the tokens that close a response, and the tokens it puts before any text."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.template = getattr(tokenizer, "chat_template", None)
        self.chat = bool(self.template)

    @functools.cached_property
    def _specials(self) -> tuple[list[int], list[int]]:
        """(tokens the tokenizer adds before any text, after it): ([BOS], []) or ([CLS], [SEP])."""
        with_special = _ids(self.tokenizer("a"))
        plain = _ids(self.tokenizer("a", add_special_tokens=False))
        at = next((i for i in range(len(with_special)) if with_special[i: i + len(plain)] == plain), 0)
        return with_special[:at], with_special[at + len(plain):]

    @property
    def start(self) -> list[int]:
        """Sequence-start tokens (BOS, [CLS]); a truncated prompt keeps them."""
        return self._specials[0]

    @functools.cached_property
    def end(self) -> list[int]:
        """The tokens that close a response: the template's end of turn, else the tokenizer's
        closing token ([SEP]), else eos."""
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        return (self._template_end() or eos) if self.chat else (self._specials[1] or eos)

    def _template_end(self) -> list[int]:
        """The tokens the template writes after an assistant message, up to and including the
        first special token (`<|im_end|>` of `<|im_end|>\\n`); [] if that cannot be found."""
        tok = self.tokenizer
        turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
        try:
            text = tok.apply_chat_template(turns, tokenize=False)
        except Exception:  # templates may reject such a conversation; fall back to eos
            return []
        if not isinstance(text, str) or _SENTINEL not in text:
            return []
        after = _ids(tok(text[text.index(_SENTINEL) + len(_SENTINEL):], add_special_tokens=False))
        special = set(tok.all_special_ids)
        return next((after[: i + 1] for i, t in enumerate(after) if t in special), [])

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token can stand for (its longest vocabulary entry; byte-level
        entries count bytes, which is at least the characters). A text of C characters is thus at
        least C / max_token_chars tokens, a bound known without tokenizing it."""
        try:
            vocab = self.tokenizer.get_vocab()
        except (AttributeError, NotImplementedError, TypeError):
            return _FALLBACK_TOKEN_CHARS
        return max((len(t) for t in vocab), default=_FALLBACK_TOKEN_CHARS) or 1

    def prompt(self, prompt: Prompt) -> list[int]:
        tok = self.tokenizer
        if not self.chat:
            return _ids(tok(prompt_text(prompt)))
        ids = _ids(tok.apply_chat_template(prompt_messages(prompt), add_generation_prompt=True, tokenize=True,
                                           return_dict=False))
        bos = tok.bos_token_id
        if bos is not None and len(ids) >= 2 and ids[0] == ids[1] == bos:  # template text + tokenizer both added it
            ids = ids[1:]
        return ids

    def response(self, text: str) -> list[int]:
        ids = _ids(self.tokenizer(text, add_special_tokens=False))
        if self.end and ids[-len(self.end):] != self.end:
            ids += self.end
        return ids


_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prompt_encoder(tokenizer) -> PromptEncoder:
    """The tokenizer's PromptEncoder, worked out once per tokenizer (and chat template): the
    public functions below are called per example by reward scoring and generation."""
    try:
        encoder = _ENCODERS.get(tokenizer)
        if encoder is None or encoder.template != getattr(tokenizer, "chat_template", None):
            encoder = _ENCODERS[tokenizer] = PromptEncoder(tokenizer)
        return encoder
    except TypeError:  # a tokenizer that cannot be weakly referenced or hashed
        return PromptEncoder(tokenizer)


def encode_prompt(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids a policy generates from: the chat template with the generation prompt, or the
    plain text with the tokenizer's special tokens when it has no template."""
    return prompt_encoder(tokenizer).prompt(prompt)


def encode_prompt_response(tokenizer, prompt: Prompt, response: str) -> tuple[list[int], list[int]]:
    """(prompt_ids, response_ids): response_ids is the response alone + the end-of-turn token."""
    encoder = prompt_encoder(tokenizer)
    return encoder.prompt(prompt), encoder.response(response)


def _location(record, index: int, source: str) -> tuple[str, str]:
    """(file, location) for messages: the record's own file line when the loader recorded it."""
    meta = getattr(record, "meta", None) or {}
    if "file" in meta and "location" in meta:
        if str(meta["file"]) == str(source):
            return source, f"{meta['location']} (record {index})"
        return source, f"record {index} ({meta['file']}, {meta['location']})"
    return source, f"record {index}"


def truncate_pieces(prompt: list[int], responses: Sequence[list[int]], start: int, max_length: int,
              max_prompt_length: int | None) -> tuple[list[int], list[list[int]], list[str]]:
    """Keep the prompt's end (after its `start` sequence-start tokens) and the responses' start.
    The prompt is cut to `max_prompt_length` if set, else only as far as the longest response needs,
    but not below half of max_length; the responses then get what is left. Returns the
    pieces and the report reasons (a reason starting with "dropped" means: do not use)."""
    longest = max(len(r) for r in responses)
    budget = max_prompt_length if max_prompt_length else max(max_length - longest, max_length // 2)
    reasons = []
    if len(prompt) > budget:
        if budget <= start:
            return prompt, list(responses), [DROPPED_NO_PROMPT]
        prompt = prompt[:start] + prompt[len(prompt) - (budget - start):]
        reasons.append(PROMPT_CUT)
    room = max_length - len(prompt)
    if room < 1:
        return prompt, list(responses), [DROPPED_NO_RESPONSE]
    if longest > room:
        responses = [r[:room] for r in responses]
        reasons.append(RESPONSE_CUT)
    return prompt, list(responses), reasons


def fit_to_length(encoder: "PromptEncoder", prompt: list[int], responses: Sequence[list[int]], max_length: int,
                  max_prompt_length: int | None = None) -> tuple[list[int], list[list[int]], list[str]]:
    """The one truncation rule, for training and scoring alike: `truncate_pieces` with the
    encoder's sequence-start tokens kept when the prompt begins with them. Pieces that fit are
    returned unchanged with no reasons."""
    if len(prompt) + max(len(r) for r in responses) <= max_length:
        return prompt, list(responses), []
    start = len(encoder.start) if prompt[: len(encoder.start)] == encoder.start else 0
    return truncate_pieces(prompt, responses, start, max_length, max_prompt_length)


def content_chars(prompt: Prompt) -> int:
    return len(prompt) if isinstance(prompt, str) else sum(len(m.get("content") or "") for m in prompt)


def keep_end(prompt: Prompt, limit: int) -> Prompt:
    """The prompt with each text cut to its last `limit` characters (truncation keeps the end)."""
    if isinstance(prompt, str):
        return prompt[-limit:]
    return [{**m, "content": m["content"][-limit:]} if isinstance(m.get("content"), str) else m for m in prompt]


def bound_raw_length(encoder: "PromptEncoder", prompt: Prompt, responses: Sequence[str], max_length: int,
                     truncation: str, *, file: str | None = None, location: str | None = None):
    """(prompt, responses) made safe to tokenize: a text longer than `max_length` tokens can
    hold at `encoder.max_token_chars` characters each is over-long for certain, known from its
    raw length, so a hostile 50 MB line is never tokenized whole. `error` raises a DataError,
    `drop` returns None, `truncate` cuts the texts far beyond what truncation keeps (the prompt's
    end, the responses' start). Texts within the bound come back unchanged."""
    chars = content_chars(prompt) + max(len(r) for r in responses)
    if chars <= max_length * encoder.max_token_chars:
        return prompt, list(responses)
    if truncation == "error":
        raise DataError(
            f"prompt + longest response = {chars} characters, more than max_length {max_length} tokens can hold "
            f"(at most {encoder.max_token_chars} characters per token). Raise max_length, or set truncation: "
            "truncate or truncation: drop", file=file, location=location)
    if truncation == "drop":
        return None
    limit = (max_length + 1) * encoder.max_token_chars
    return keep_end(prompt, limit), [r[:limit] for r in responses]


def encode_pairs(
    tokenizer,
    records: Sequence[PairwiseRecord],
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    truncation: str = "error",
    source: str = "data",
) -> tuple[list[EncodedPair], DataReport]:
    """Tokenize pairs. Over-long pairs (prompt + longest response > max_length): `error` raises a
    DataError naming the record, `truncate` keeps the prompt's end and the responses' start
    (`fit_to_length`), `drop` leaves them out. Every cut and drop is counted in the report."""
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATION)}, got {truncation!r}")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    encoder, report, pairs = prompt_encoder(tokenizer), DataReport(), []
    for index, record in enumerate(records):
        if not isinstance(record, PairwiseRecord):
            file, where = _location(record, index, source)
            raise DataError(f"expected a pairwise record, got {type(record).__name__}", file=file, location=where)
        file, where = _location(record, index, source)
        bounded = bound_raw_length(encoder, record.prompt, [record.chosen, record.rejected], max_length, truncation,
                                   file=file, location=where)
        if bounded is None:
            report.add(DROPPED_LONG, example=f"{file}, {where}")
            continue
        record_prompt, (record_chosen, record_rejected) = bounded
        prompt = encoder.prompt(record_prompt)
        chosen, rejected = encoder.response(record_chosen), encoder.response(record_rejected)
        total = len(prompt) + max(len(chosen), len(rejected))
        if total > max_length:
            if truncation == "error":
                file, where = _location(record, index, source)
                raise DataError(
                    f"prompt ({len(prompt)} tokens) + longest response ({max(len(chosen), len(rejected))}) = {total} "
                    f"tokens > max_length {max_length}. Raise max_length, or set truncation: truncate (keep the "
                    "prompt's end and the responses' start) or truncation: drop", file=file, location=where)
            reasons = [DROPPED_LONG]
            if truncation == "truncate":
                prompt, (chosen, rejected), reasons = fit_to_length(encoder, prompt, (chosen, rejected), max_length,
                                                                    max_prompt_length)
            for reason in reasons:
                report.add(reason, example=", ".join(_location(record, index, source)))
            if any(r.startswith("dropped") for r in reasons):
                continue
            if chosen == rejected and record.chosen != record.rejected:
                report.add(SAME_AFTER_CUT, example=record_where(record))
        pairs.append(EncodedPair(prompt, chosen, rejected, margin=record.margin, index=index))
    report.add(ENCODED, len(pairs))
    return pairs, report
