"""Verifiable rewards: 1 when a response's final answer equals the prompt's reference answer, else 0
(the outcome reward of RL with verifiable rewards: Lambert et al. 2024, Tülu 3, arXiv:2411.15124
§4; DeepSeek-R1's accuracy reward, arXiv:2501.12948 §2.2.2).

The final answer is read and compared by math-verify (Hugging Face, github.com/huggingface/Math-Verify):
it extracts the answer from free text ("The answer is 12.", "\\boxed{12}", "... = 12"; an anchor
such as "answer is" or a box wins over the last number) and compares it with the reference as a
math expression, so "12", "12.0" and "$12$" all match "12". Responses in which it finds no answer
(e.g. "twelve") score 0. Its leniency is math's, not the wording's: an unevaluated "7 + 5" and
"12%" also match "12" (math-verify 0.9.0). That leniency is exploitable: a policy trained on it
can learn to end on an unevaluated expression ("... so she has 17 + 3 - 17") instead of its value
(docs/results/online-rl.md). So by default (`literal=True`, exact match) the extracted
final answer must be a value written out (12, -4, 0.5, 1,200, 1/2, \frac{1}{2}, 3\pi) with no
arithmetic operator left in it; `literal=False` (reward spec `math:lenient`) accepts any expression
equal to the reference.

Which answer belongs to which prompt is looked up by `answer_key(prompt)`; the trainer and the lab
tasks build their answer dicts with the same function (`answers_of(rows)`).
"""

from __future__ import annotations

import re
import threading
from functools import cache, lru_cache
from typing import Mapping, Sequence

import torch
from torch import Tensor

from alignlab.data.records import Prompt
from alignlab.data.tokenize import prompt_text
from alignlab.rewards.base import _check_lengths

# math-verify bounds each parse/compare with signal.alarm, which only works in the main thread: from
# any other thread its parse/verify raise ValueError. There we turn the timeout off (its documented
# way out); in the main thread we keep it, since a pathological response (a tower of powers) could
# otherwise hang sympy. (math-verify logs a warning the first time it runs without a timeout.)
_TIMEOUT_S = 5


def answer_key(prompt: Prompt) -> str:
    """The key of a prompt (text or chat message list) in an answers dict."""
    return prompt_text(prompt)


def answers_of(rows: Sequence[Mapping]) -> dict[str, str]:
    """{answer_key(row["prompt"]): row["answer"]} for the rows that have an answer."""
    return {answer_key(r["prompt"]): str(r["answer"]) for r in rows if r.get("answer") is not None}


def _timeout() -> int | None:
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@cache
def _math_verify():
    # Imported on first use: math-verify pulls in sympy and an ANTLR LaTeX parser (~0.4 s measured).
    import math_verify

    return math_verify


@lru_cache(maxsize=65536)
def _parse_gold(answer: str) -> tuple:
    mv = _math_verify()
    # A bare LaTeX reference reads correctly only inside math delimiters (raw "3\\pi" parses as 3,
    # "\\sqrt{2}" as nothing); a box is the strongest anchor math-verify knows.
    text = answer if ("$" in answer or "\\boxed" in answer) else f"\\boxed{{{answer}}}"
    parsed = mv.parse(text, parsing_timeout=_timeout()) or mv.parse(answer, parsing_timeout=_timeout())
    if not parsed:
        raise ValueError(f"math-verify cannot read the reference answer {answer[:80]!r}")
    return tuple(parsed)


# An operator after the first character: "17 + 3 - 17", "2^3", "4 \\times 3" (a leading minus is a sign)
_OPERATOR = re.compile(r"(?<=.)[+\-*^×÷]|\\times|\\cdot|\\div")


def is_literal(extracted: str) -> bool:
    """Whether math-verify's extracted answer text is a value written out (12, -4, 0.5, 1/2,
    \\frac{1}{2}, 3\\pi), not an unevaluated expression (17 + 3 - 17, 2^3, 4 \\times 3)."""
    text = extracted.replace("$", "").replace(" ", "").replace(",", "")
    return bool(text) and not _OPERATOR.search(text)


def is_correct(response: str, answer: str, *, literal: bool = True) -> bool:
    """Whether math-verify finds `answer` as the final answer of `response` (written out as a
    number when `literal`)."""
    mv = _math_verify()
    parsed = mv.parse(response, parsing_timeout=_timeout())
    if not parsed or (literal and not is_literal(str(parsed[-1]))):
        return False
    return mv.verify(list(_parse_gold(answer)), parsed, timeout_seconds=_timeout())


def exact_match(responses: Sequence[str], answers: Sequence[str], *, literal: bool = True) -> Tensor:
    """(N,) float32: 1.0 where responses[i]'s final answer equals answers[i], else 0.0."""
    if isinstance(responses, str) or isinstance(answers, str):
        raise TypeError("exact_match takes lists of responses and answers, not single strings")
    if len(responses) != len(answers):
        raise ValueError(f"exact_match needs one answer per response, got {len(answers)} answers "
                         f"for {len(responses)} responses")
    return torch.tensor([float(is_correct(r, str(a), literal=literal)) for r, a in zip(responses, answers)],
                        dtype=torch.float32)


class AnswerReward:
    """Reward source: 1.0 when the response's final answer equals its prompt's reference answer.

    Args:
        answers: answer_key(prompt) -> reference answer (a number or a LaTeX expression).
        name: the source's name in logs.
        literal: the final answer must be a number written out (exact match; see the module doc).
    """

    def __init__(self, answers: Mapping[str, str], name: str = "math", *, literal: bool = True):
        self.answers = {str(k): str(v) for k, v in answers.items()}
        self.name, self.literal = name, literal

    def answer_for(self, prompt: Prompt) -> str:
        key = answer_key(prompt)
        if key not in self.answers:
            raise ValueError(f"reward {self.name!r}: no reference answer for prompt {key[:80]!r} "
                             f"({len(self.answers)} answers known); give every prompt an `answer` field")
        return self.answers[key]

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Tensor:
        _check_lengths(prompts, responses)
        return exact_match(list(responses), [self.answer_for(p) for p in prompts], literal=self.literal)
