"""Prompt rows: what generation-based methods (Best-of-N, online RL) start from.

A row is `{"prompt": text or chat message list}`, plus `"answer": text` when the prompt has a
reference answer (for verifiable rewards, `alignlab.rewards.verifiable`). Rows come from a file
(`read_prompt_rows`) or from a lab task's split (`alignlab.lab.tasks`, served by `take_rows`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator, Mapping

from alignlab.data.errors import DataError

SPLITS = ("train", "eval")


def read_prompt_rows(path) -> list[dict]:
    """Prompt rows from a JSON Lines file (a `prompt` field per line: non-empty text or a chat
    message list; an optional `answer`, text or a number, kept as text; other fields ignored) or
    from a .txt file (one prompt per non-blank line). Errors name the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".txt":
        return [{"prompt": line} for line in lines if line.strip()]
    return [prompt_row(row, where) for row, where in json_objects(path, lines, "with a 'prompt' field")]


def json_objects(path: Path, lines: list[str], expected: str = "") -> Iterator[tuple[dict, dict]]:
    """(object, where) for each non-blank line of a JSON Lines file; `where` ({file, location})
    is what DataError takes, so the caller's field checks name the line too."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = {"file": str(path), "location": f"line {number}"}
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON ({exc.msg})", **where) from None
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object {expected}".rstrip() + f", got {type(row).__name__}", **where)
        yield row, where


def prompt_row(row: Mapping[str, Any], where: dict) -> dict:
    """One checked row `{prompt, answer?}` from a parsed JSON object; `where` ({file, location})
    goes into the DataError that names the bad field."""
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        bad = next((i for i, m in enumerate(prompt) if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                                                            and isinstance(m.get("content"), str))), None)
        if not prompt or bad is not None:
            what = "an empty message list" if not prompt else f"message {bad} without string 'role' and 'content'"
            raise DataError(f"expected non-empty text or a message list, got {what}", field="prompt", **where)
    elif not (isinstance(prompt, str) and prompt.strip()):
        got = "nothing" if prompt is None else ("blank text" if isinstance(prompt, str) else type(prompt).__name__)
        raise DataError(f"expected non-empty text or a message list, got {got}", field="prompt", **where)
    out = {"prompt": prompt}
    answer = row.get("answer")
    if answer is not None:
        # bool is an int to Python, but `true` is no answer to a math problem.
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
            raise DataError(f"expected non-empty text or a number, got {answer!r}"[:120], field="answer", **where)
        out["answer"] = str(answer).strip()
    return out


def take_rows(splits: Mapping[str, list[dict]], split: str, n: int | None, task: str) -> list[dict]:
    """Copies of the first n rows of `splits[split]` (a lab task's fixed, disjoint splits); all of
    them for n=None."""
    if split not in splits:
        raise ValueError(f"task {task!r}: unknown split {split!r}; use one of {', '.join(splits)}")
    rows = splits[split]
    n = len(rows) if n is None else n
    if not 0 <= n <= len(rows):
        raise ValueError(f"task {task!r}: asked for {n} {split} prompts, the split has {len(rows)}")
    return copy.deepcopy(rows[:n])
