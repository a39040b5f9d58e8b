"""Metrics against hand-worked values."""

import pytest
import torch

from alignlab.eval.metrics import bootstrap_ci, sequence_kl, win_outcomes, win_rate, win_rate_ci


def test_win_rate_hand_values_with_ties():
    a, b = [3.0, 1.0, 2.0, 2.0], [1.0, 2.0, 2.0, 0.0]  # win, loss, tie, win
    assert win_rate(a, b) == pytest.approx(2.5 / 4)
    assert win_rate(torch.tensor(a), torch.tensor(b)) == pytest.approx(2.5 / 4)
    assert win_rate(b, a) == pytest.approx(1.5 / 4)  # a's wins are b's losses, ties stay half
    assert win_rate([1.0, 1.0], [1.0, 1.0]) == 0.5
    assert win_outcomes(a, b).tolist() == [1.0, 0.0, 0.5, 1.0]
    assert isinstance(win_rate(a, b), float)


def test_win_rate_rejects_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="same length"):
        win_rate([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        win_rate([], [])
    with pytest.raises(ValueError, match="1-D"):
        win_rate(torch.zeros(2, 2), torch.zeros(2, 2))


def test_sequence_kl_is_the_mean_log_ratio():
    policy, reference = [-10.0, -4.0, -7.5], [-12.0, -3.0, -8.5]
    assert sequence_kl(policy, reference) == pytest.approx((2.0 - 1.0 + 1.0) / 3)
    assert sequence_kl(torch.tensor(policy), torch.tensor(policy)) == 0.0
    with pytest.raises(ValueError, match="same length"):
        sequence_kl([1.0], [1.0, 2.0])


def test_sequence_kl_estimates_a_known_kl():
    # pi = N(1, 1), pi_ref = N(0, 1): KL = 1/2; the estimate on pi's own samples converges to it
    generator = torch.Generator().manual_seed(0)
    y = 1.0 + torch.randn(20000, generator=generator)
    assert sequence_kl(-0.5 * (y - 1) ** 2, -0.5 * y**2) == pytest.approx(0.5, abs=0.03)


def test_bootstrap_ci_contains_the_mean_and_has_the_normal_width():
    generator = torch.Generator().manual_seed(0)
    values = (torch.rand(400, generator=generator) < 0.6).double()
    low, high = bootstrap_ci(values)
    mean = values.mean().item()
    assert low < mean < high
    normal_width = 2 * 1.96 * (mean * (1 - mean) / 400) ** 0.5
    assert high - low == pytest.approx(normal_width, rel=0.15)
    assert bootstrap_ci(values.tolist()) == (low, high)  # seeded: same interval every time
    narrower = bootstrap_ci(values, alpha=0.5)
    assert low < narrower[0] < narrower[1] < high


def test_bootstrap_ci_with_another_statistic():
    values = torch.arange(101, dtype=torch.float64)
    low, high = bootstrap_ci(values, fn=torch.median, n=300)
    assert low <= 50 <= high and high - low < 30
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([1.0], alpha=1.0)


def test_win_rate_ci_brackets_the_win_rate():
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(300, generator=generator) + 0.3, torch.randn(300, generator=generator)
    low, high = win_rate_ci(a, b)
    assert low < win_rate(a, b) < high and 0 <= low and high <= 1
