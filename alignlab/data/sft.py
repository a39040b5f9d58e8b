"""SFT examples: token ids with a loss mask, from demonstrations (`alignlab.data.demonstrations`).

The mask marks the tokens the loss is on: by default the assistant's tokens of every assistant turn
(each turn's text as the chat template renders it, and the end-of-turn token that closes it), so a
conversation teaches every reply, not only the last. The rest (system and user turns, the template's
role headers, the newline it writes after an end-of-turn token) is context only.

How the assistant tokens are found, for any chat template: the conversation is rendered up to each
assistant turn with the generation prompt (`before`) and up to and including that turn (`after`);
the turn is the text `after` adds to `before`, cut after the end-of-turn marker the template closes
an assistant message with (`PromptEncoder.end`). The pieces between are context. Each piece is
tokenized on its own, so a prompt's tokens are exactly those generation conditions on
(`alignlab.data.tokenize`'s boundary rule), and a single-turn example gives the same ids as
`encode_prompt_response`. A template that rewrites earlier turns when a later one is added (so the
rendering does not grow turn by turn) is an error naming the example.

`assistant_only=False` puts the loss on every token (after the first, which nothing predicts).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from alignlab.data.demonstrations import Demonstration
from alignlab.data.errors import DataError
from alignlab.data.records import prompt_messages
from alignlab.data.report import DataReport
from alignlab.data.tokenize import TRUNCATION, _ids, encode_prompt_response, prompt_encoder

CUT = "truncated: conversation end cut to max_length"
DROPPED_LONG = "dropped: longer than max_length"
DROPPED_NO_TARGET = "dropped: no target token left within max_length"
ENCODED = "encoded examples"


@dataclass
class SFTExample:
    input_ids: list[int]
    loss_mask: list[bool]  # loss_mask[j]: token j is a target (always False for j = 0)
    index: int = 0  # position of the demonstration in the list given to encode_sft

    @property
    def num_targets(self) -> int:
        return sum(self.loss_mask)


def conversation_pieces(tokenizer, messages: list[dict], *, turns: Sequence[int] | None = None,
                        tail: bool = False) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_target) pieces: context, then each assistant turn
    in `turns` (default: every assistant turn). `tail`: also the text after the last of them (as
    context). Raises ValueError when the template's rendering does not grow turn by turn."""
    encoder = prompt_encoder(tokenizer)
    end = tokenizer.decode(encoder.end) if encoder.end else ""
    targets = [i for i, m in enumerate(messages) if m["role"] == "assistant"] if turns is None else list(turns)

    def render(upto: int, generation: bool) -> str:
        return tokenizer.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=generation)

    pieces, done = [], ""
    for i in targets:
        before, after = render(i, True), render(i + 1, False)
        if not (before.startswith(done) and after.startswith(before)):
            raise ValueError(f"the chat template does not render the conversation turn by turn at message {i} "
                             "(it rewrites earlier turns), so assistant tokens cannot be located")
        turn = after[len(before):]
        cut = turn.rfind(end) if end else -1
        turn = turn[: cut + len(end)] if cut >= 0 else turn
        pieces += [(before[len(done):], False), (turn, True)]
        done = before + turn
    if tail:
        rest = render(len(messages), False)
        if rest.startswith(done) and len(rest) > len(done):
            pieces.append((rest[len(done):], False))
    return pieces


def encode_conversation(tokenizer, messages: list[dict], *, turns: Sequence[int] | None = None,
                        assistant_only: bool = True) -> tuple[list[int], list[bool]]:
    """(input_ids, loss_mask) of a conversation under the tokenizer's chat template: the mask is
    on the assistant turns in `turns` (default every assistant turn), or on every token after the
    first with `assistant_only=False` (the conversation then runs to its end)."""
    ids, mask = [], []
    for text, target in conversation_pieces(tokenizer, messages, turns=turns, tail=not assistant_only):
        piece = _ids(tokenizer(text, add_special_tokens=False)) if text else []
        ids += piece
        mask += [target or not assistant_only] * len(piece)
    if mask:
        mask[0] = False
    return ids, mask


def encode_demonstration(tokenizer, demo: Demonstration, *, assistant_only: bool = True) -> tuple[list[int], list[bool]]:
    """(input_ids, loss_mask) of one demonstration: a conversation (every assistant turn), a
    prompt + completion (the completion only, even when the prompt holds earlier assistant turns),
    or plain text (every token)."""
    encoder = prompt_encoder(tokenizer)
    where = dict(file=demo.file, location=demo.location)
    if demo.prompt is None and demo.messages is None:
        ids = encoder.start + _ids(tokenizer(demo.text, add_special_tokens=False))
        return ids, [False] + [True] * (len(ids) - 1)
    if not encoder.chat:
        if demo.messages is not None:
            raise DataError("a conversation needs a tokenizer with a chat template; this one has none", field="messages",
                            **where)
        prompt, response = encode_prompt_response(tokenizer, demo.prompt, demo.text)
        return prompt + response, [False] + [not assistant_only] * (len(prompt) - 1) + [True] * len(response)
    if demo.messages is not None:
        messages, turns = demo.messages, None
    else:
        messages = prompt_messages(demo.prompt) + [{"role": "assistant", "content": demo.text}]
        turns = [len(messages) - 1]
    try:
        return encode_conversation(tokenizer, messages, turns=turns, assistant_only=assistant_only)
    except ValueError as exc:
        raise DataError(str(exc), **where) from None


def _texts(demo: Demonstration) -> list[str]:
    if demo.messages is not None:
        return [m["content"] for m in demo.messages]
    prompt = [] if demo.prompt is None else [m["content"] for m in prompt_messages(demo.prompt)]
    return prompt + [demo.text]


def _keep_start(demo: Demonstration, limit: int) -> Demonstration:
    """The demonstration with its texts cut, in order, to `limit` characters in all (what
    truncation keeps is the start). A prompt/completion pair keeps at least a character of its
    completion, so that what is left still has a target."""
    budget = [limit]

    def cut(text: str) -> str:
        kept = text[: max(budget[0], 0)]
        budget[0] -= len(kept)
        return kept

    if demo.messages is not None:
        return dataclasses.replace(demo, messages=[{**m, "content": cut(m["content"])} for m in demo.messages])
    if demo.prompt is None:
        return dataclasses.replace(demo, text=cut(demo.text))
    prompt = demo.prompt if isinstance(demo.prompt, str) else [dict(m) for m in demo.prompt]
    prompt = cut(prompt) if isinstance(prompt, str) else [{**m, "content": cut(m["content"])} for m in prompt]
    return dataclasses.replace(demo, prompt=prompt, text=cut(demo.text) or demo.text[:1])


def _bound_raw_length(encoder, demo: Demonstration, max_length: int, truncation: str) -> Demonstration | None:
    """A demonstration longer than `max_length` tokens can hold at `encoder.max_token_chars`
    characters each is over-long for certain, known from its raw length: never tokenized whole
    (a hostile 50 MB line). `error` raises, `drop` returns None, `truncate` cuts it far beyond what
    truncation keeps."""
    chars = sum(len(t) for t in _texts(demo))
    if chars <= max_length * encoder.max_token_chars:
        return demo
    if truncation == "error":
        raise DataError(f"{chars} characters, more than max_length {max_length} tokens can hold (at most "
                        f"{encoder.max_token_chars} characters per token). Raise max_length, or set truncation: "
                        "truncate or drop", file=demo.file, location=demo.location)
    return None if truncation == "drop" else _keep_start(demo, (max_length + 1) * encoder.max_token_chars)


def encode_sft(tokenizer, demos: list[Demonstration], *, max_length: int, truncation: str = "error",
               assistant_only: bool = True) -> tuple[list[SFTExample], DataReport]:
    """Tokenized SFT examples. Over-long ones: `error` names the line, `truncate` keeps the start
    (cut at max_length; dropped if no target token is left), `drop` leaves them out. Counted."""
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATION)}, got {truncation!r}")
    report, out, encoder = DataReport(), [], prompt_encoder(tokenizer)
    for index, demo in enumerate(demos):
        where = f"{demo.file}, {demo.location}"
        bounded = _bound_raw_length(encoder, demo, max_length, truncation)
        if bounded is None:
            report.add(DROPPED_LONG, example=where)
            continue
        ids, mask = encode_demonstration(tokenizer, bounded, assistant_only=assistant_only)
        if not any(mask):  # e.g. plain text of one token: nothing to predict it from
            report.add(DROPPED_NO_TARGET, example=where)
            continue
        if len(ids) > max_length:
            if truncation == "error":
                raise DataError(f"{len(ids)} tokens, over max_length {max_length} (raise max_length, or set truncation: "
                                "truncate or drop)", file=demo.file, location=demo.location)
            if truncation == "drop":
                report.add(DROPPED_LONG, example=where)
                continue
            ids, mask = ids[:max_length], mask[:max_length]
            if not any(mask):
                report.add(DROPPED_NO_TARGET, example=where)
                continue
            report.add(CUT, example=where)
        out.append(SFTExample(ids, mask, index))
    report.add(ENCODED, len(out))
    return out, report
