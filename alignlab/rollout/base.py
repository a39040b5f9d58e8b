"""The rollout protocol: sampling parameters in, completions with token ids and log-probs out.

Every generation backend (HF `generate` today, vLLM later) implements `RolloutBackend.generate`
on already-tokenized prompts, so the trainer never depends on how tokens were produced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    """Completions sampled per prompt."""
    temperature: float = 1.0
    """Logits are divided by this before sampling (> 0; use `greedy` for argmax decoding)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p (1 = off)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    max_new_tokens: int = 64
    """Hard limit on completion length; a completion that reaches it has `finished=False`."""
    stop_strings: tuple[str, ...] | None = None
    """Extra stop strings (needs a tokenizer); the completion keeps the tokens that spell them."""
    seed: int | None = 0
    """Seed of the sampler's own `torch.Generator` (the global RNG is untouched); None = random."""
    greedy: bool = False
    """Argmax decoding; temperature/top-k/top-p are ignored and no log-probs are returned."""

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"SamplingParams.temperature must be > 0 (or greedy=True), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0, got {self.top_k}")
        if isinstance(self.stop_strings, str):  # a bare string would be read as its characters
            object.__setattr__(self, "stop_strings", (self.stop_strings,))


@dataclass
class Completions:
    """B prompts x n samples, flattened prompt-major: row i is sample i % n of prompt i // n.

    `logprobs[i][t]` is log softmax(logits_t / temperature)[completion_ids[i][t]]: the log-prob of
    each sampled token under the *temperature-scaled* model distribution, before any top-k/top-p
    truncation (so it equals what a trainer recomputes from `logits / temperature`, and with
    top_k=0, top_p=1 it is exactly the distribution that was sampled). None for greedy decoding.
    """

    prompt_index: list[int]
    """Index of each row's prompt in the `prompt_ids` passed to `generate`."""
    prompt_ids: list[list[int]]
    """Each row's prompt tokens (the same list object for the n samples of one prompt)."""
    completion_ids: list[list[int]]
    """Sampled tokens, no padding; includes the EOS/end-of-turn token when the row finished on one."""
    texts: list[str] | None
    """Decoded completions with special tokens skipped; None when the backend has no tokenizer."""
    logprobs: list[torch.Tensor] | None
    """Per-token sampling log-probs (float32, same length as completion_ids[i]); None when greedy."""
    finished: list[bool]
    """True when the row ended on EOS or a stop string, False when it hit max_new_tokens."""
    n: int = 1
    """Samples per prompt."""

    def __len__(self) -> int:
        return len(self.completion_ids)

    @property
    def num_prompts(self) -> int:
        return len(self) // self.n

    def logprob_sums(self) -> torch.Tensor:
        """Summed sampling log-probs per row, (B * n,) — log pi(y|x) at the sampling temperature."""
        if self.logprobs is None:
            raise ValueError("greedy completions carry no log-probs")
        return torch.stack([lp.sum() for lp in self.logprobs]) if self.logprobs else torch.zeros(0)


@runtime_checkable
class RolloutBackend(Protocol):
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> Completions:
        """Sample `params.n` completions for each tokenized prompt (see `Completions`)."""
        ...
