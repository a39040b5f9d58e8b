"""The DPO benchmark (bench/dpo_vs_trl.py) end to end on a tiny random model, in seconds: both
sides train, tokenize identically, agree on every reference log-prob and on the mean loss."""

from __future__ import annotations

import sys

import pytest
from helpers import BENCH_DIR as BENCH, run_bench


def test_synthetic_pairs_are_deterministic_and_within_token_ranges(smol_tokenizer):
    sys.path.insert(0, str(BENCH))
    try:
        from common import count_tokens, synthetic_pairs
    finally:
        sys.path.remove(str(BENCH))
    pairs = synthetic_pairs(smol_tokenizer, 16, seed=3)
    assert pairs == synthetic_pairs(smol_tokenizer, 16, seed=3)
    assert pairs != synthetic_pairs(smol_tokenizer, 16, seed=4)
    prompts = [count_tokens(smol_tokenizer, p.prompt) for p in pairs]
    responses = [count_tokens(smol_tokenizer, r) for p in pairs for r in (p.chosen, p.rejected)]
    assert all(10 <= n <= 60 for n in prompts) and all(10 <= n <= 110 for n in responses)
    assert max(responses) - min(responses) > 30  # a spread of lengths, not one length
    assert all(p.chosen != p.rejected for p in pairs)


def test_dpo_vs_trl_runs_both_sides_and_they_agree(tiny_policy_dir, tmp_path):
    pytest.importorskip("trl", reason="the benchmark's peer; installed by the test extra")
    out = tmp_path / "result.json"
    report = run_bench("dpo_vs_trl.py", out, "--model", str(tiny_policy_dir), "--pairs", "8")
    for side in ("alignlab", "trl"):
        r = report[side]
        assert r["pairs_per_s"] > 0 and r["seconds"] > 0 and r["peak_rss_mb"] > 0
        assert r["steps"] == 2  # 8 pairs, batch 4, one epoch
        assert r["pairs_per_s"] == pytest.approx(8 / r["seconds"])
    assert report["speedup"] == pytest.approx(report["alignlab"]["pairs_per_s"] / report["trl"]["pairs_per_s"])
    # Same ids and the same model give the same reference log-probs pair by pair (sums of ~100
    # token log-probs near -10.8 each: a one-token difference would show as ~1e-2 here).
    assert report["token_ids_identical"] and report["tokens_alignlab"] == report["tokens_trl"]
    assert report["reference_logps_max_rel_diff"] < 1e-4
    assert report["loss_rel_diff"] < 0.02
