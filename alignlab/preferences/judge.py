"""An LLM judge as a preference source: any local causal LM is shown the question and two
answers labelled A and B, and asked which is better, to reply with one letter. Its probability
that the first answer is better is read from the logits of the two label tokens at the next
position, normalised over just those two:

    q(x, y) = exp(z_A / τ) / (exp(z_A / τ) + exp(z_B / τ))

(z_A, z_B the next-token logits of the labels, τ the temperature), and the judge's preference is
averaged over both presentation orders (`both_orders`): P(a ≻ b) = ½ [q(a, b) + 1 − q(b, a)], so
position bias cancels and P(a ≻ b) + P(b ≻ a) = 1 exactly. This is the generative-judge recipe of
the LLM-as-a-judge and self-rewarding literature (e.g. UltraFeedback's GPT-4 annotator, OSP's
self-preferring model), read as a probability instead of a sampled letter.

`judge:embedded` uses the embedded SmolLM2-135M-Instruct (weak but real); `judge:PATH` any local
model folder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from alignlab.data.tokenize import encode_prompt, prompt_text
from alignlab.preferences.base import both_orders, check_lengths, check_probabilities

DEFAULT_TEMPLATE = (
    "You are judging two answers to the same question. Which answer is more helpful, correct and "
    "appropriate?\n\n"
    "Question:\n{question}\n\n"
    "Answer {label_a}:\n{first}\n\n"
    "Answer {label_b}:\n{second}\n\n"
    "Which answer is better? Reply with a single letter, {label_a} or {label_b}."
)
REQUIRED_FIELDS = ("{question}", "{first}", "{second}")


class JudgePreference:
    """A causal LM judging pairs of answers (see the module docstring).

    `template` is the judging message (sent as one user turn through the tokenizer's chat
    template, or as plain text when it has none) with the fields {question}, {first}, {second}
    and optionally {label_a}, {label_b}. `labels` are the two answer labels; each must be one token
    of the tokenizer, else a ValueError. `max_length` bounds a judging prompt in tokens: a longer
    one is an error naming the pair, never silently cut."""

    def __init__(self, model, tokenizer, *, template: str = DEFAULT_TEMPLATE, labels: Sequence[str] = ("A", "B"),
                 temperature: float = 1.0, batch_size: int = 8, max_length: int = 4096, name: str = "judge"):
        missing = [f for f in REQUIRED_FIELDS if f not in template]
        if missing:
            raise ValueError(f"judge template lacks the field(s) {', '.join(missing)}")
        if len(labels) != 2 or labels[0] == labels[1]:
            raise ValueError(f"a judge needs two different answer labels, got {list(labels)}")
        if not temperature > 0:
            raise ValueError(f"the judge temperature must be > 0, got {temperature}")
        if batch_size < 1:
            raise ValueError(f"the judge batch size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.template, self.labels = template, tuple(labels)
        self.temperature, self.batch_size, self.max_length = float(temperature), int(batch_size), int(max_length)
        self.label_ids = [label_token_id(tokenizer, label) for label in self.labels]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = int(pad if pad is not None else 0)

    def judging_ids(self, prompt, first: str, second: str) -> list[int]:
        """Token ids of one judging prompt, ending where the model is to write its label."""
        text = self.template.format(question=prompt_text(prompt), first=first, second=second,
                                    label_a=self.labels[0], label_b=self.labels[1])
        return encode_prompt(self.tokenizer, text)

    @torch.no_grad()
    def first_better(self, prompts: Sequence, first: Sequence[str], second: Sequence[str]) -> Tensor:
        """(N,) q(first, second): the probability that the answer shown first (label A) is better."""
        n = check_lengths(prompts, first, second)
        encoded = [self.judging_ids(p, x, y) for p, x, y in zip(prompts, first, second)]
        for i, ids in enumerate(encoded):
            if len(ids) > self.max_length:
                raise ValueError(f"judge {self.name!r}: the judging prompt of pair {i} is {len(ids)} tokens, "
                                 f"over max_length={self.max_length}")
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, n, self.batch_size):
            chunk = encoded[start: start + self.batch_size]
            lengths = torch.tensor([len(ids) for ids in chunk], device=device)
            width = int(lengths.max())
            # Right padding: with causal attention the real tokens never see the pads, so each
            # row's last real position is computed as if it were alone.
            input_ids = torch.full((len(chunk), width), self.pad_token_id, dtype=torch.long, device=device)
            mask = torch.zeros((len(chunk), width), dtype=torch.long, device=device)
            for row, ids in enumerate(chunk):
                input_ids[row, : len(ids)] = torch.tensor(ids, device=device)
                mask[row, : len(ids)] = 1
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits  # (B, T, V)
            last = logits[torch.arange(len(chunk), device=device), lengths - 1]  # (B, V)
            pair = last[:, self.label_ids].float() / self.temperature  # (B, 2): z_A, z_B
            out.append(torch.softmax(pair, dim=-1)[:, 0].cpu())
        return torch.cat(out) if out else torch.zeros(0)

    @torch.no_grad()
    def prefer(self, prompts: Sequence, a: Sequence[str], b: Sequence[str]) -> Tensor:
        n = check_lengths(prompts, a, b)
        if n == 0:
            return torch.zeros(0)

        def judged(p, first, second):  # a NaN from the model is an error naming the judge
            return check_probabilities(self.first_better(p, first, second), n, self.name)

        return both_orders(judged, prompts, a, b)


def label_token_id(tokenizer, label: str) -> int:
    """The one token id of `label` as the model would write it first in its reply."""
    ids = tokenizer(label, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"judge label {label!r} is {len(ids)} tokens for this tokenizer ({ids}); "
                         "each label must be exactly one token: choose other labels")
    return int(ids[0])


JUDGE_OPTIONS = ("template", "labels", "temperature", "batch_size", "max_length")


def load_judge(name: str, options: dict) -> JudgePreference:
    """`judge:NAME` -> a JudgePreference on the local model NAME ("" or "embedded": the embedded
    SmolLM2). `options`: template (the text, or @FILE to read it from a file), labels ("A,B"),
    temperature, batch_size, max_length; `seed` is accepted and unused (the judge is deterministic)."""
    from alignlab.models.load import load_policy, load_tokenizer

    options = dict(options)
    options.pop("seed", None)
    unknown = sorted(set(options) - set(JUDGE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) for judge:{name}: {', '.join(unknown)} (known: {', '.join(JUDGE_OPTIONS)})")
    template = options.get("template") or DEFAULT_TEMPLATE
    if template.startswith("@"):
        from pathlib import Path

        template = Path(template[1:]).read_text(encoding="utf-8")
    labels = options.get("labels", ("A", "B"))
    if isinstance(labels, str):
        labels = [s.strip() for s in labels.split(",")]
    kwargs = {k: options[k] for k in ("temperature", "batch_size", "max_length") if k in options}
    model_name = name or "embedded"
    tokenizer, model = load_tokenizer(model_name), load_policy(model_name)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return JudgePreference(model, tokenizer, template=template, labels=labels, name=f"judge:{model_name}", **kwargs)
