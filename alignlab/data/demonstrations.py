"""Demonstrations: text the policy should learn or keep being able to write (SFT data or
pretraining text).

Used by `alignlab train sft` (`alignlab.train.sft`) and by the online trainers' pretraining/SFT
mixing term (InstructGPT's PPO-ptx, PPO-max). A JSON Lines file, one demonstration per line, in
one of three shapes:

- `{"prompt": text or message list, "completion": text}` (`response` is accepted for
  `completion`): an SFT example; the loss is on the completion tokens (and the end-of-turn token).
- `{"messages": [{"role": ..., "content": ...}, ...]}`: a conversation (SFT only); the loss is on
  every assistant turn (`encode_conversation`).
- `{"text": text}`: plain pretraining text; the loss is on every token after the first.

Errors name the file, the line and the field. `encode_demonstrations` (the PTX term's blocks) and
`alignlab.data.sft.encode_sft` apply the run's `max_length` with its `truncation` policy and count
what they cut or dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignlab.data.errors import DataError
from alignlab.data.prompts import json_objects, prompt_row
from alignlab.data.tokenize import encode_prompt_response, prompt_encoder

RESPONSE_KEYS = ("response", "completion")


@dataclass
class Demonstration:
    prompt: object | None  # text or message list; None for plain text and conversations
    text: str  # the response, or the whole plain text ("" for a conversation)
    file: str
    location: str  # "line N"
    messages: list | None = None  # a conversation: every assistant turn is a target


@dataclass
class EncodedDemos:
    blocks: list[tuple[list[int], list[int]]]  # (prefix ids, scored ids); prefix empty for plain text
    truncated: int = 0
    dropped: int = 0

    def report(self) -> dict:
        return {"demonstrations": len(self.blocks), "truncated": self.truncated, "dropped": self.dropped}


def read_demonstrations(path) -> list[Demonstration]:
    """Every demonstration of a JSON Lines file (blank lines skipped); the first bad line raises."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"demonstrations file {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    out = [demonstration(row, where) for row, where in json_objects(path, lines)]
    if not out:
        raise DataError("no demonstrations in the file", file=str(path))
    return out


def demonstration(row, where: dict) -> Demonstration:
    """One checked demonstration from a parsed row (a JSON object, or a `(prompt, completion)`
    pair given in Python); `where` ({file, location}) names it in errors."""
    if isinstance(row, (tuple, list)) and len(row) == 2:
        row = {"prompt": row[0], "completion": row[1]}
    if not isinstance(row, dict):
        raise DataError(f"expected a JSON object or a (prompt, completion) pair, got {type(row).__name__}", **where)
    shapes = [k for k in ("prompt", "messages", "text") if k in row]
    if len(shapes) > 1:
        raise DataError(f"both {shapes[0]!r} and {shapes[1]!r}: a demonstration is a 'prompt' with a 'completion', a "
                        "'messages' list or a 'text', one of them", **where)
    if "messages" in row and "prompt" not in row:
        return Demonstration(None, "", where["file"], where["location"], messages=_messages(row["messages"], where))
    if "text" in row and "prompt" not in row:
        text = row["text"]
        if not (isinstance(text, str) and text.strip()):
            raise DataError(f"expected non-empty text, got {text!r}"[:120], field="text", **where)
        return Demonstration(None, text, where["file"], where["location"])
    if "prompt" not in row:
        raise DataError("expected a 'prompt' with a 'completion' (SFT), a 'messages' list (a conversation) or a 'text' "
                        "field (plain text)", **where)
    prompt = prompt_row(row, where)["prompt"]
    key = next((k for k in RESPONSE_KEYS if k in row), None)
    response = row.get(key) if key else None
    if not (isinstance(response, str) and response.strip()):
        got = "nothing" if response is None else repr(response)[:80]
        what = "non-empty text" if key else "the completion's non-empty text ('completion' or 'response')"
        raise DataError(f"expected {what}, got {got}", field=key or "response", **where)
    return Demonstration(prompt, response, where["file"], where["location"])


def _messages(messages, where: dict) -> list[dict]:
    """A checked conversation: messages with string role and content, at least one assistant
    turn with text, and something before the first assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"expected a non-empty list of messages, got {messages!r}"[:120], field="messages", **where)
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(f"message {i} has no string 'role' and 'content': {m!r}"[:120], field="messages", **where)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        roles = ", ".join(m["role"] for m in messages)
        raise DataError(f"no assistant turn to train on (roles: {roles})", field="messages", **where)
    empty = next((i for i in turns if not messages[i]["content"].strip()), None)
    if empty is not None:
        raise DataError(f"message {empty} is an assistant turn without text", field="messages", **where)
    if turns[0] == 0:
        raise DataError("message 0 is an assistant turn with nothing before it (start with a user or system turn)",
                        field="messages", **where)
    return messages


def encode_demonstrations(tokenizer, demos: list[Demonstration], *, max_length: int,
                          truncation: str = "error") -> EncodedDemos:
    """Token blocks for the packer. Over-long demonstrations: `error` names the line; `truncate`
    keeps the start (the prompt whole, the response cut); `drop` leaves them out. Both counted."""
    encoder = prompt_encoder(tokenizer)
    out = EncodedDemos([])
    for demo in demos:
        if demo.messages is not None:
            raise DataError("a conversation ('messages') is SFT data (`alignlab train sft`); demonstrations mixed into "
                            "online training take a 'prompt' with a 'completion', or 'text'", file=demo.file,
                            location=demo.location, field="messages")
        if demo.prompt is None:
            prefix, scored = [], encoder.start + list(tokenizer(demo.text, add_special_tokens=False)["input_ids"])
        else:
            prefix, scored = encode_prompt_response(tokenizer, demo.prompt, demo.text)
        if len(prefix) + len(scored) > max_length:
            room = max_length - len(prefix)
            if truncation == "error":
                raise DataError(f"{len(prefix) + len(scored)} tokens, over max_length {max_length} (set truncation: "
                                "truncate or drop to allow it)", file=demo.file, location=demo.location)
            if truncation == "drop" or room < (1 if prefix else 2):
                out.dropped += 1
                continue
            scored = scored[:room]
            out.truncated += 1
        if not prefix and len(scored) < 2:
            out.dropped += 1  # one token of plain text: nothing to predict it from
            continue
        out.blocks.append((prefix, scored))
    if not out.blocks:
        raise ValueError(f"no demonstration is usable within max_length {max_length} ({out.dropped} dropped)")
    return out
