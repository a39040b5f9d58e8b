"""Per-sequence log-probs of response tokens, computed once per forward.

Where the time goes on CPU (PERF_NOTES 1): the LM head and the log-softmax over a ~49k vocabulary.
So the decoder runs on the packed rows, only the hidden states that predict response tokens are
kept, and the head is applied to those in chunks as `logit[target] - logsumexp(logits)` — prompt
and padding positions never reach the head.
"""

from __future__ import annotations

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
    hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """log softmax(head(hidden))[target] for (N, H) hidden states -> (N,), chunked over N so no
    more than chunk_size x V logits exist at once."""
    out = []
    for start in range(0, hidden.shape[0], chunk_size):
        logits = head(hidden[start : start + chunk_size]).float()  # (n, V)
        picked = logits.gather(-1, targets[start : start + chunk_size, None]).squeeze(-1)
        out.append(picked - torch.logsumexp(logits, dim=-1))
    return torch.cat(out) if out else hidden.new_zeros(0)


def sequence_logps(model: nn.Module, batch: PackedBatch, *, chunk_size: int = 1024) -> torch.Tensor:
    """Summed response-token log-probs per sequence: (num_sequences,)."""
    lm = unwrap_causal_lm(model)
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    if _head_is_plain(lm):
        hidden = lm.get_decoder()(**kwargs, use_cache=False).last_hidden_state  # (R, L, H)
        hidden = hidden.reshape(-1, hidden.shape[-1])[batch.score_positions]  # (N, H)
        token_logps = token_logps_from_hidden(hidden, lm.get_output_embeddings(), batch.score_targets, chunk_size)
    else:
        logits = model(**kwargs, use_cache=False).logits.float()  # (R, L, V)
        logits = logits.reshape(-1, logits.shape[-1])[batch.score_positions]
        token_logps = logits.gather(-1, batch.score_targets[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)
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
