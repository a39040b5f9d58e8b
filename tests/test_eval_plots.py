"""Plots are written as valid PNG images."""

import matplotlib.image
import pytest

from alignlab.eval.plots import plot_reward_vs_kl, plot_training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # something was drawn


def test_training_curves_png(tmp_path):
    rows = [{"step": s, "gold_reward": 0.1 * s, "kl": 0.02 * s * s} for s in (15, 0, 30, 45)]
    out = plot_training_curves(rows, tmp_path / "sub" / "curves.png", title="demo")
    assert out == tmp_path / "sub" / "curves.png"
    assert_png(out)
    wide = matplotlib.image.imread(out)
    assert wide.shape[1] > wide.shape[0]  # two panels side by side


@pytest.mark.parametrize("sqrt_kl", [False, True])
def test_reward_vs_kl_png(tmp_path, sqrt_kl):
    points = [{"label": f"beta={beta}", "kl": kl, "gold_reward": kl / (1 + kl), "proxy_reward": kl}
              for beta in (0.1, 0.5) for kl in (0.0, 0.5, 2.0, 8.0)]
    out = plot_reward_vs_kl(points, tmp_path / "rk.png", rewards=("gold_reward", "proxy_reward"), sqrt_kl=sqrt_kl)
    assert_png(out)
    assert_png(plot_reward_vs_kl([{"kl": 1.0, "gold_reward": 0.2}], tmp_path / "one.png"))


def test_pyplot_state_is_untouched(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_training_curves([{"step": 0, "gold_reward": 0.0, "kl": 0.0}], tmp_path / "x.png")
    assert plt.get_fignums() == before


def test_reward_vs_kl_draws_a_band_where_points_carry_intervals(tmp_path):
    points = [{"label": "wco", "kl": kl, "gold_reward": 0.5 * kl} for kl in (0.0, 1.0, 2.0)]
    plain = plot_reward_vs_kl(points, tmp_path / "plain.png")
    banded = plot_reward_vs_kl([{**p, "gold_reward_ci": (p["gold_reward"] - 0.3, p["gold_reward"] + 0.3)} for p in points],
                               tmp_path / "band.png")
    assert_png(banded)
    a, b = matplotlib.image.imread(plain), matplotlib.image.imread(banded)
    assert a.shape == b.shape and (abs(a - b) > 0.01).any()
    # one point without an interval: no band for that series, so the plain image comes back
    partial = plot_reward_vs_kl([{**points[0], "gold_reward_ci": (-0.3, 0.3)}, *points[1:]], tmp_path / "partial.png")
    assert (matplotlib.image.imread(partial) == a).all()
