"""The GRPO benchmark (bench/grpo_vs_trl.py) end to end on a tiny random model, in seconds: both
sides generate and train, count the same completions from the same prompt ids, and report a time
split that adds up; the observers agree with what each trainer logs itself."""

from __future__ import annotations

import pytest
from helpers import run_bench

SPLIT = ("generation", "scoring", "reference_and_old_passes", "training", "other")


def run_grpo_bench(policy_dir, out, *args):
    return run_bench("grpo_vs_trl.py", out, "--model", policy_dir, "--prompts", "4", "--max-new-tokens", "8",
                     "--iterations", "1", *args)


def test_grpo_vs_trl_runs_both_sides_and_reports_a_consistent_split(tiny_policy_dir, tmp_path):
    pytest.importorskip("trl", reason="the benchmark's peer; installed by the test extra")
    report = run_grpo_bench(tiny_policy_dir, tmp_path / "result.json", "--samples", "4")
    for side in ("alignlab", "trl"):
        r = report[side]
        assert r["completions"] == 16 and r["steps"] == 1  # 4 prompts x 4 samples, one iteration
        assert r["generate_calls"] == [16] and r["reward_calls"] == 1  # all completions in one generate call
        assert r["completions_per_s"] == pytest.approx(16 / r["seconds"])
        assert r["peak_rss_mb"] > 0
        split = r["time_split"]
        assert set(split) == set(SPLIT)
        assert all(v >= 0 for v in split.values()), split
        assert sum(split[k] for k in SPLIT if k != "other") <= r["seconds"] <= r["wall_seconds"]
        assert sum(split.values()) == pytest.approx(r["seconds"])
        assert split["generation"] > 0 and split["training"] > 0 and split["scoring"] > 0
        assert split["reference_and_old_passes"] < 0.05  # beta 0, one pass: neither side runs one
        # the observers see what the trainer logs: rewards, completion lengths, truncation
        assert r["mean_reward_per_iteration"] == pytest.approx(r["logged_mean_reward_per_iteration"], abs=1e-5)
        assert r["observed_mean_completion_tokens"] == pytest.approx(r["mean_completion_tokens"])
        assert r["observed_truncated_share"] == pytest.approx(r["truncated_share"])
        assert 1 <= r["mean_completion_tokens"] <= 8 and 0 <= r["truncated_share"] <= 1
        assert len(r["step_losses"]) == 1
    assert report["alignlab"]["save_seconds"] >= 0  # left out of its seconds (TRL does not save)
    assert report["trl"]["gradient_checkpointing"] and not report["alignlab"]["gradient_checkpointing"]
    assert report["trl"]["rollout_logprob_passes"] == 0
    assert report["speedup"] == pytest.approx(report["alignlab"]["completions_per_s"] / report["trl"]["completions_per_s"])
    assert report["memory_ratio"] == pytest.approx(report["alignlab"]["peak_rss_mb"] / report["trl"]["peak_rss_mb"])
    # the same prompts, tokenized identically (TRL renders the chat messages itself)
    assert report["prompt_ids_identical"] and report["prompt_tokens_alignlab"] == report["prompt_tokens_trl"] > 16 * 30
    assert report["losses_within_bound"] and report["rewards_same_range"] and report["completion_lengths_same_range"]
    assert "different completions" in report["note"]
    assert report["setup"]["completions_per_step"] == 16 and report["setup"]["batch_size"] == 4


def test_only_alignlab_with_pairs(tiny_policy_dir, tmp_path):
    report = run_grpo_bench(tiny_policy_dir, tmp_path / "result.json", "--samples", "2", "--only", "alignlab")
    assert "trl" not in report and "speedup" not in report
    r = report["alignlab"]
    assert r["completions"] == 8 and r["generate_calls"] == [8] and r["steps"] == 1
    assert report["setup"]["batch_size"] == 2  # 4 prompts x 2 samples over 4 accumulation steps


def test_grpo_bench_counts_the_bf16_rollout_copys_generate_calls(tiny_policy_dir, tmp_path):
    # rollout_dtype bfloat16 samples with a deep copy of the model: the observer must see its calls
    report = run_grpo_bench(tiny_policy_dir, tmp_path / "result.json", "--samples", "4", "--only", "alignlab",
                            "--rollout-dtype", "bfloat16")
    r = report["alignlab"]
    assert r["completions"] == 16 and r["generate_calls"] == [16]
    assert r["observed_mean_completion_tokens"] == pytest.approx(r["mean_completion_tokens"])
    assert report["setup"]["alignlab_rollout_dtype"] == "bfloat16"
