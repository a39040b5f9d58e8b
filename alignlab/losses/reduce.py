"""The one way token-level losses are reduced to a scalar.

Online RL losses (PPO, GRPO, Dr. GRPO, ...) compute a loss per response token, (B, T), and
differ mainly in how they average it. Each mode is a published choice:

- "token_mean": sum over all response tokens / number of response tokens in the batch. Every
  token weighs the same, so long responses weigh more (DAPO's token-level loss).
- "seq_mean_token_mean": mean over tokens within each sequence, then mean over sequences. Every
  sequence weighs the same (the original GRPO objective).
- "sum": plain masked sum.
- "constant": masked sum / a caller-given constant. Dr. GRPO divides by a constant (e.g.
  B * max_response_length) so that a response's length does not scale its per-token gradient;
  the same mode gives exact gradient accumulation for "token_mean" when the constant is the token
  count of the whole accumulated batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

REDUCTIONS = ("token_mean", "seq_mean_token_mean", "sum", "constant")


def reduce_token_loss(
    loss: Tensor, mask: Tensor, mode: str = "token_mean", *, normalizer: float | None = None
) -> Tensor:
    """Reduce a (B, T) token loss to a scalar, counting only the positions where mask is set.

    Args:
        loss: (B, T) per-token loss; values at masked-out positions are ignored (even NaN) and
            get zero gradient.
        mask: (B, T) bool or 0/1 tensor, 1 on response tokens.
        mode: one of REDUCTIONS (see the module docstring).
        normalizer: the divisor for mode "constant" (required there, rejected elsewhere so
            that it is never silently ignored).

    Empty input never divides by zero: a batch without tokens reduces to 0 (with a zero gradient)
    in every mode, and "seq_mean_token_mean" averages over the sequences that have tokens only.
    """
    if loss.shape != mask.shape or loss.dim() != 2:
        raise ValueError(f"loss and mask must both be (B, T); got {tuple(loss.shape)} and {tuple(mask.shape)}")
    if mode not in REDUCTIONS:
        raise ValueError(f"unknown reduction {mode!r}; valid: {', '.join(REDUCTIONS)}")
    if (normalizer is None) != (mode != "constant"):
        raise ValueError(f"normalizer is required for mode 'constant' and only for it (mode={mode!r})")
    mask = mask.bool()
    masked = torch.where(mask, loss, 0.0)  # (B, T); where, not a product: 0 * NaN would be NaN
    if mode == "sum":
        return masked.sum()
    if mode == "constant":
        if not normalizer > 0:
            raise ValueError(f"normalizer must be positive, got {normalizer}")
        return masked.sum() / normalizer
    if mode == "token_mean":
        return masked.sum() / mask.sum().clamp(min=1)
    tokens_per_seq = mask.sum(-1)  # (B,) int
    seq_means = masked.sum(-1) / tokens_per_seq.clamp(min=1)  # (B,), 0 for empty rows
    return seq_means.sum() / (tokens_per_seq > 0).sum().clamp(min=1)
