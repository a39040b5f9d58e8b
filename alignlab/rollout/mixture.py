"""Sampling Nash-MD's opponent: the token-level geometric mixture of the policy and the reference
(Munos et al. 2023, arXiv:2312.00886, eq. 5 and sec. 7),

    log pi^mu(y_t | x, y_<t) = log softmax((1 - m) log pi_T(. | x, y_<t) + m log pi_ref,T(. | x, y_<t))[y_t]

with pi_T = softmax(logits / T) at the sampling temperature T and m = mixture_coef in [0, 1].

`GeometricMixture` is a logits processor that runs before the sampler inside the policy's own
`generate` call. At each step it feeds the reference model the newest token, with the reference's
own KV cache and the same left-padding mask and positions as the policy, and returns the mixed
log-probs. The sampler then draws from them at temperature 1, so the recorded step log-probs
are log pi^mu. Under LoRA the reference is the same model with its adapter disabled for that
forward pass (`reference_context`); under full fine-tuning it is the frozen copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor


@dataclass(frozen=True)
class Mixture:
    """What the opponent sampler mixes with the policy: `reference` is the module whose forward
    gives the reference logits, called under `context()` (the adapter-disabling context under
    LoRA); `coef` is m."""

    reference: torch.nn.Module
    coef: float
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def __post_init__(self):
        if not 0.0 <= self.coef <= 1.0:
            raise ValueError(f"mixture_coef must be in [0, 1], got {self.coef}")


class GeometricMixture(LogitsProcessor):
    """Replaces the policy's next-token scores (B, V) by the log-probs of the geometric mixture
    at `temperature`. `attention_mask` (B, P) is the chunk's left-padded prompt mask; generated
    tokens all count (as in `generate`, which feeds pad tokens to finished rows)."""

    def __init__(self, mixture: Mixture, attention_mask: torch.Tensor, temperature: float):
        self.mixture, self.mask, self.temperature = mixture, attention_mask, temperature
        self.cache = None
        self.seen = 0  # tokens of each row the reference's cache holds

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        B, L = input_ids.shape
        if L > self.mask.shape[1]:
            ones = torch.ones(B, L - self.mask.shape[1], dtype=self.mask.dtype, device=self.mask.device)
            self.mask = torch.cat([self.mask, ones], 1)
        mask = self.mask[:, :L]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L): left padding shifts no position
        new = slice(self.seen, L)
        with self.mixture.context():
            out = self.mixture.reference(input_ids=input_ids[:, new], attention_mask=mask,
                                         position_ids=positions[:, new], cache=self.cache, use_cache=True,
                                         logits_to_keep=1)
        self.cache, self.seen = out.cache, L
        m, t = self.mixture.coef, self.temperature
        policy = torch.log_softmax(scores.float() / t, -1)
        reference = torch.log_softmax(out.logits[:, -1].float() / t, -1)
        return torch.log_softmax((1 - m) * policy + m * reference, -1)
