"""Supervised fine-tuning: the negative log-likelihood of the demonstration's target tokens."""

from __future__ import annotations

from torch import Tensor


def sft_loss(policy_logps: Tensor, num_targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Maximum-likelihood SFT (the SFT stage of Ouyang et al. 2022, sec. 3.5), token-level:

        L_SFT(theta) = -(1 / |T|) sum_{(s, t) in T} log pi_theta(y_{s,t} | y_{s,<t})

    over the set T of target tokens (the assistant tokens, or every token) of all sequences in the
    batch, so every target token weighs the same.

    Args:
        policy_logps: (B,) summed log-probs of each sequence's target tokens under the policy,
            sum_t log pi_theta(y_{s,t} | y_{s,<t}).
        num_targets: (B,) how many target tokens each sequence has (|T| = num_targets.sum()).

    Returns the per-sequence summed NLL (B,), which the training loop divides by the target
    tokens of the whole accumulation window (the trainer counts tokens as its examples), giving
    L_SFT of that window exactly; and no metrics (the loop logs L_SFT as `loss`).
    """
    if policy_logps.shape != num_targets.shape or policy_logps.dim() != 1:
        raise ValueError(f"policy_logps and num_targets must both be (B,); got {tuple(policy_logps.shape)} and "
                         f"{tuple(num_targets.shape)}")
    return -policy_logps, {}
