import pytest
import torch

from alignlab.eval.calibration import expected_calibration_error, plot_reliability, reliability_bins


def test_perfectly_calibrated_predictor_has_near_zero_ece():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(200_000, generator=g)
    y = (torch.rand(200_000, generator=g) < p).float()
    assert expected_calibration_error(p, y) < 0.01


def test_overconfident_predictor_by_hand():
    # all predictions 0.95, half right: ECE = |0.95 - 0.5| = 0.45
    p = torch.full((10,), 0.95)
    y = torch.tensor([1.0, 0.0] * 5)
    assert expected_calibration_error(p, y) == pytest.approx(0.45)
    table = reliability_bins(p, y)
    assert table[9]["count"] == 10 and table[9]["frequency"] == 0.5


def test_reliability_plot_is_a_png(tmp_path):
    p = torch.tensor([0.1, 0.4, 0.8, 1.0])
    plot_reliability(reliability_bins(p, torch.tensor([0.0, 1.0, 1.0, 1.0])), tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
