"""reduce_token_loss: hand-computed values on a ragged mask for every mode."""

import pytest
import torch

from alignlab.losses import REDUCTIONS, reduce_token_loss

NAN = float("nan")
# Three sequences of 3, 1 and 0 response tokens; masked-out positions hold junk, even NaN.
LOSS = [[1.0, 2.0, 3.0, 100.0], [5.0, NAN, 7.0, 8.0], [9.0, 9.0, 9.0, 9.0]]
MASK = [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]

EXPECTED = {
    "token_mean": (1 + 2 + 3 + 5) / 4,
    "seq_mean_token_mean": ((1 + 2 + 3) / 3 + 5 / 1) / 2,  # the empty sequence is not counted
    "sum": 1 + 2 + 3 + 5,
    "constant": (1 + 2 + 3 + 5) / 8,
}


def inputs(requires_grad: bool = False, mask_dtype=torch.bool):
    return torch.tensor(LOSS, dtype=torch.float64, requires_grad=requires_grad), torch.tensor(MASK).to(mask_dtype)


@pytest.mark.parametrize("mode", REDUCTIONS)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32, torch.long])
def test_hand_values_on_a_ragged_mask(mode, mask_dtype):
    loss, mask = inputs(mask_dtype=mask_dtype)
    normalizer = 8.0 if mode == "constant" else None
    assert reduce_token_loss(loss, mask, mode, normalizer=normalizer).item() == pytest.approx(EXPECTED[mode])


def test_gradients_by_hand():
    grads = {
        "token_mean": [[1 / 4] * 3 + [0], [1 / 4, 0, 0, 0], [0] * 4],
        "seq_mean_token_mean": [[1 / 6] * 3 + [0], [1 / 2, 0, 0, 0], [0] * 4],
        "sum": [[1.0] * 3 + [0], [1.0, 0, 0, 0], [0] * 4],
        "constant": [[1 / 8] * 3 + [0], [1 / 8, 0, 0, 0], [0] * 4],
    }
    for mode, expected in grads.items():
        loss, mask = inputs(requires_grad=True)
        reduce_token_loss(loss, mask, mode, normalizer=8.0 if mode == "constant" else None).backward()
        assert torch.equal(loss.grad, torch.tensor(expected, dtype=torch.float64)), mode


@pytest.mark.parametrize("mode", REDUCTIONS)
def test_no_tokens_gives_zero_not_nan(mode):
    loss = torch.ones(2, 3, requires_grad=True)
    out = reduce_token_loss(loss, torch.zeros(2, 3, dtype=torch.bool), mode, normalizer=4.0 if mode == "constant" else None)
    out.backward()
    assert out.item() == 0.0 and torch.equal(loss.grad, torch.zeros(2, 3))


def test_constant_mode_gives_exact_token_mean_over_accumulated_micro_batches():
    """Two micro-batches, each divided by the token count of both, add up to the token mean of
    the whole batch (what gradient accumulation needs)."""
    loss, mask = inputs()
    total_tokens = int(mask.sum())
    parts = [reduce_token_loss(loss[rows], mask[rows], "constant", normalizer=total_tokens) for rows in (slice(0, 1), slice(1, 3))]
    assert sum(parts).item() == pytest.approx(reduce_token_loss(loss, mask, "token_mean").item())


def test_bad_arguments():
    loss, mask = inputs()
    with pytest.raises(ValueError, match="normalizer"):
        reduce_token_loss(loss, mask, "constant")
    with pytest.raises(ValueError, match="normalizer"):
        reduce_token_loss(loss, mask, "token_mean", normalizer=8.0)
    with pytest.raises(ValueError, match="positive"):
        reduce_token_loss(loss, mask, "constant", normalizer=0.0)
    with pytest.raises(ValueError, match="valid: token_mean"):
        reduce_token_loss(loss, mask, "mean")
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        reduce_token_loss(loss, mask[:, :2])
