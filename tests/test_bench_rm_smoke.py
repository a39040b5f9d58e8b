"""The reward-model benchmark (bench/rm_vs_trl.py) end to end on a tiny random model, in seconds:
all five runs train; alignlab and TRL tokenize identically, start from the same head and agree
on the loss; the ensemble cost ratio is reported."""

from __future__ import annotations

import pytest
from helpers import run_bench

RUNS = ("alignlab", "alignlab_checkpointing", "trl", "alignlab_ensemble4_frozen", "alignlab_single_frozen",
        "alignlab_ensemble4_lora", "alignlab_single_lora", "alignlab_ensemble4_lora_top", "alignlab_single_lora_top")
TOP = ("--lora-layers", "1")  # the tiny model has 2 layers: adapters on the top one, the bottom one shared


def test_rm_vs_trl_runs_every_side_and_alignlab_agrees_with_trl(tiny_policy_dir, tmp_path):
    pytest.importorskip("trl", reason="the benchmark's peer; installed by the test extra")
    out = tmp_path / "result.json"
    report = run_bench("rm_vs_trl.py", out, "--model", str(tiny_policy_dir), "--pairs", "8", *TOP)
    for side in RUNS:
        r = report[side]
        assert r["pairs_per_s"] > 0 and r["seconds"] > 0 and r["peak_rss_mb"] > 0
        assert r["steps"] == 2  # 8 pairs, batch 4, one epoch
        assert r["pairs_per_s"] == pytest.approx(8 / r["seconds"])
    assert report["alignlab_ensemble4_frozen"]["members"] == 4
    assert report["alignlab_single_frozen"]["frozen_backbone"] and not report["alignlab"]["frozen_backbone"]
    assert report["speedup"] == pytest.approx(report["alignlab"]["pairs_per_s"] / report["trl"]["pairs_per_s"])
    assert report["speedup_checkpointing"] == pytest.approx(
        report["alignlab_checkpointing"]["pairs_per_s"] / report["trl"]["pairs_per_s"])
    assert report["memory_ratio"] == pytest.approx(report["alignlab"]["peak_rss_mb"] / report["trl"]["peak_rss_mb"])
    assert report["alignlab_checkpointing"]["gradient_checkpointing"] and not report["alignlab"]["gradient_checkpointing"]
    # checkpointing changes memory, not the math: same per-step losses
    assert report["alignlab_checkpointing"]["step_losses"] == pytest.approx(report["alignlab"]["step_losses"], abs=1e-5)
    four, one = (report[side]["seconds"] for side in ("alignlab_ensemble4_frozen", "alignlab_single_frozen"))
    assert report["ensemble4_cost_vs_single"] == pytest.approx(four / one)
    assert report["ensemble4_frozen_vs_full"] == pytest.approx(four / report["alignlab"]["seconds"])
    lora4, lora1 = report["alignlab_ensemble4_lora"], report["alignlab_single_lora"]
    assert lora4["members"] == 4 and lora1["members"] == 1 and lora4["lora"] and lora1["lora"]
    assert not report["alignlab"]["lora"] and not lora4["frozen_backbone"]
    assert report["lora_ensemble4_cost_vs_single"] == pytest.approx(lora4["seconds"] / lora1["seconds"])
    top4, top1 = report["alignlab_ensemble4_lora_top"], report["alignlab_single_lora_top"]
    assert top4["members"] == 4 and top4["lora_layers"] == top1["lora_layers"] == 1 and lora4["lora_layers"] == 0
    assert report["lora_top_ensemble4_cost_vs_single"] == pytest.approx(top4["seconds"] / top1["seconds"])
    # Same ids, same backbone, same head: the first step's loss (before any update) is the same
    # number on both sides, and with the same data order (seed 0) every step's is.
    assert report["token_ids_identical"] and report["pairs_with_different_ids"] == 0
    assert report["sequence_tokens_alignlab"] == report["sequence_tokens_trl"] > 8 * 2 * 20
    assert report["initial_head_max_abs_diff"] == 0.0
    assert report["alignlab"]["step_losses"][0] == pytest.approx(report["trl"]["step_losses"][0], abs=1e-5)
    assert report["loss_rel_diff"] < 0.02
    assert report["trl"]["pad_token"] == "<|endoftext|>"  # not <|im_end|>, which ends every response


def test_only_ensemble_runs_the_two_frozen_runs(tiny_policy_dir, tmp_path):
    out = tmp_path / "result.json"
    report = run_bench("rm_vs_trl.py", out, "--model", str(tiny_policy_dir), "--pairs", "4", "--only", "ensemble")
    assert set(RUNS) & set(report) == {"alignlab_ensemble4_frozen", "alignlab_single_frozen"}
    assert report["ensemble4_cost_vs_single"] > 0 and "speedup" not in report and "ensemble4_frozen_vs_full" not in report
    assert "lora_ensemble4_cost_vs_single" not in report


def test_only_lora_runs_the_four_lora_runs(tiny_policy_dir, tmp_path):
    out = tmp_path / "result.json"
    report = run_bench("rm_vs_trl.py", out, "--model", str(tiny_policy_dir), "--pairs", "4", "--only", "lora", *TOP)
    assert set(RUNS) & set(report) == {"alignlab_ensemble4_lora", "alignlab_single_lora", "alignlab_ensemble4_lora_top",
                                       "alignlab_single_lora_top"}
    assert report["lora_ensemble4_cost_vs_single"] > 0 and "lora_ensemble4_vs_full" not in report
