"""Per-sequence log-probs of response tokens, computed once per forward.

Where the time goes on CPU: the LM head and the log-softmax over a ~49k vocabulary.
So the decoder runs on the packed rows, only the hidden states that predict response tokens are
kept, and the head is applied to those in chunks as `logit[target] - logsumexp(logits)` — prompt
and padding positions never reach the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from alignlab.models.packing import PackedBatch


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers CausalLM under any PEFT/DDP/accelerate wrappers (LoRA layers stay in)."""
    while True:
        if hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
            model = model.module
        else:
            return model


def _head_is_plain(lm: nn.Module) -> bool:
    """Models that post-process logits (soft-capping, scaling) take the full-forward path."""
    config = getattr(lm, "config", None)
    if config is None:
        return False
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return False
    return hasattr(lm, "get_decoder") and lm.get_output_embeddings() is not None


def token_logps_from_hidden(
    hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, chunk_size: int = 1024, *,
    temperature: float = 1.0, entropy: list | None = None,
) -> torch.Tensor:
    """log softmax(head(hidden) / temperature)[target] for (N, H) hidden states -> (N,), chunked
    over N so no more than chunk_size x V logits exist at once. When `entropy` is a list, the
    (no-grad) entropy of each position's distribution is appended to it chunk by chunk."""
    out = []
    for start in range(0, hidden.shape[0], chunk_size):
        logits = head(hidden[start : start + chunk_size]).float()  # (n, V)
        out.append(_pick(logits, targets[start : start + chunk_size], temperature, entropy))
    return torch.cat(out) if out else hidden.new_zeros(0)


def _pick(logits: torch.Tensor, targets: torch.Tensor, temperature: float, entropy: list | None) -> torch.Tensor:
    if temperature != 1.0:
        logits = logits / temperature
    logz = torch.logsumexp(logits, dim=-1)  # (n,)
    if entropy is not None:
        with torch.no_grad():
            entropy.append(logz - (torch.softmax(logits, -1) * logits).sum(-1))
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logz


@dataclass
class TokenOutputs:
    logps: torch.Tensor
    """(N,) log-probs of the scored tokens, in `batch.score_positions` order."""
    hidden: torch.Tensor | None = None
    """(N, H) the hidden states that predict them (for value heads), when asked for."""
    entropy: torch.Tensor | None = None
    """(N,) entropy of each scored position's next-token distribution (no grad), when asked for."""


def token_outputs(model: nn.Module, batch: PackedBatch, *, temperature: float = 1.0, keep_hidden: bool = False,
                  entropy: bool = False, chunk_size: int = 1024) -> TokenOutputs:
    """Per-token log-probs of the response tokens (at a sampling temperature), optionally with
    the hidden states that predict them and the entropies, from one forward."""
    lm = unwrap_causal_lm(model)
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    entropies: list | None = [] if entropy else None
    if _head_is_plain(lm):
        hidden = lm.get_decoder()(**kwargs, use_cache=False).last_hidden_state  # (R, L, H)
        hidden = hidden.reshape(-1, hidden.shape[-1])[batch.score_positions]  # (N, H)
        logps = token_logps_from_hidden(hidden, lm.get_output_embeddings(), batch.score_targets, chunk_size,
                                        temperature=temperature, entropy=entropies)
    else:
        out = model(**kwargs, use_cache=False, output_hidden_states=keep_hidden)
        logits = out.logits.float()
        logits = logits.reshape(-1, logits.shape[-1])[batch.score_positions]  # (N, V)
        logps = _pick(logits, batch.score_targets, temperature, entropies)
        hidden = out.hidden_states[-1].reshape(-1, out.hidden_states[-1].shape[-1])[batch.score_positions] if keep_hidden else None
    return TokenOutputs(logps, hidden if keep_hidden else None, torch.cat(entropies) if entropies else None)


def sequence_logps(model: nn.Module, batch: PackedBatch, *, chunk_size: int = 1024) -> torch.Tensor:
    """Summed response-token log-probs per sequence: (num_sequences,)."""
    token_logps = token_outputs(model, batch, chunk_size=chunk_size).logps
    out = token_logps.new_zeros(batch.num_sequences)
    return out.index_add(0, batch.score_sequence, token_logps)


class SequenceScorer(nn.Module):
    """Wraps a causal LM so that `forward(batch)` returns per-sequence response log-probs.

    The training loop prepares this wrapper (not the bare LM) with accelerate, so that under DDP
    the gradient hooks fire on the call that actually runs the model."""

    def __init__(self, model: nn.Module, chunk_size: int = 1024):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return sequence_logps(self.model, batch, chunk_size=self.chunk_size)
