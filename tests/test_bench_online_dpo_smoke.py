"""The online DPO benchmark (bench/online_dpo_vs_trl.py) end to end on a tiny random model, in
seconds: both sides generate, judge and train one step, from the same prompt ids, and report a
time split that adds up."""

from __future__ import annotations

import pytest
from helpers import run_bench

SPLIT = ("generation", "scoring", "reference", "training", "other")


def run_online_dpo_bench(policy_dir, out, *args):
    return run_bench("online_dpo_vs_trl.py", out, "--model", policy_dir, "--prompts", "4", "--max-new-tokens", "8",
                     "--iterations", "1", "--grad-accum", "2", *args)


def test_online_dpo_vs_trl_runs_both_sides_and_reports_a_consistent_split(tiny_policy_dir, tmp_path):
    pytest.importorskip("trl", reason="the benchmark's peer; installed by the test extra")
    report = run_online_dpo_bench(tiny_policy_dir, tmp_path / "result.json")
    for side in ("alignlab", "trl"):
        r = report[side]
        assert r["completions"] == 8 and r["steps"] == 1  # 4 prompts x 2 samples, one round = one step
        assert r["completions_per_s"] == pytest.approx(8 / r["seconds"])
        assert r["peak_rss_mb"] > 0 and len(r["step_losses"]) == 1
        split = r["time_split"]
        assert set(split) == set(SPLIT) and all(v >= 0 for v in split.values()), split
        assert sum(split.values()) == pytest.approx(r["seconds"]) and r["seconds"] <= r["wall_seconds"]
        assert split["generation"] > 0 and split["training"] > 0 and split["scoring"] > 0
        assert split["reference"] > 0  # a frozen reference copy, one pass per pair on both sides
        assert r["pairs"] + r["ties_dropped"] == 4
        assert 1 <= r["observed_mean_completion_tokens"] <= 8
    assert report["alignlab"]["generate_calls"] == [8]  # a round's completions in one call
    assert report["trl"]["generate_calls"] == [4, 4]  # TRL: per micro-batch of 2 prompts x 2
    assert report["alignlab"]["reward_calls"] == 1 and report["trl"]["reward_calls"] == 2
    assert report["trl"]["ties_dropped"] == 0  # TRL keeps ties
    assert report["trl"]["gradient_checkpointing"] and not report["alignlab"]["gradient_checkpointing"]
    assert report["speedup"] == pytest.approx(report["alignlab"]["completions_per_s"] / report["trl"]["completions_per_s"])
    assert report["memory_ratio"] == pytest.approx(report["alignlab"]["peak_rss_mb"] / report["trl"]["peak_rss_mb"])
    assert report["prompt_ids_identical"]  # the same prompts, tokenized identically
    assert "tied pairs" in report["note"] and report["setup"]["beta"] == 0.1


def test_only_alignlab(tiny_policy_dir, tmp_path):
    report = run_online_dpo_bench(tiny_policy_dir, tmp_path / "result.json", "--only", "alignlab")
    assert "trl" not in report and "speedup" not in report
    r = report["alignlab"]
    assert r["completions"] == 8 and r["generate_calls"] == [8] and r["steps"] == 1
    assert report["setup"]["batch_size_pairs"] == 2
