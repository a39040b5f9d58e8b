"""The SFT benchmark (bench/sft_vs_trl.py) end to end on a tiny random model, in seconds: both
sides train on the same tokens with the same targets, and agree on the mean loss."""

from __future__ import annotations

import pytest
from helpers import run_bench


def test_sft_vs_trl_runs_both_sides_on_the_same_tokens(tiny_policy_dir, tmp_path):
    pytest.importorskip("trl", reason="the benchmark's peer; installed by the test extra")
    out = tmp_path / "result.json"
    report = run_bench("sft_vs_trl.py", out, "--model", str(tiny_policy_dir), "--examples", "8", "--batch-size", "4")
    for side in ("alignlab", "trl"):
        r = report[side]
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"]) and r["peak_rss_mb"] > 0
        assert r["steps"] >= 2
    assert report["alignlab"]["steps"] == 2  # 8 examples, batch 4, one epoch
    assert report["same_tokens"] and report["target_tokens_diff"] == 0
    assert report["speedup"] == pytest.approx(report["alignlab"]["tokens_per_s"] / report["trl"]["tokens_per_s"])
    # a random tiny model: both losses sit near log(vocab) = 10.8 whatever the order of the data
    assert report["loss_rel_diff"] < 0.01
