"""The decode-throughput benchmark (bench/generate_vs_hf.py) end to end on a tiny random model."""

from __future__ import annotations

import pytest
from helpers import run_bench


def test_generate_vs_hf_reports_both_samplers_side_by_side(tiny_policy_dir, tmp_path):
    report = run_bench("generate_vs_hf.py", tmp_path / "result.json", "--model", tiny_policy_dir, "--prompts", "3",
                       "--samples", "2", "--max-new-tokens", "5", "--repeats", "2", "--bf16")
    variants = ("alignlab_fp32", "transformers_fp32", "alignlab_bf16", "transformers_bf16")
    median = report["tokens_per_s_median"]
    assert set(median) == set(variants) and all(v > 0 for v in median.values())
    for name in variants:
        counts = report["completion_tokens_runs"][name]
        assert len(counts) == 2 and all(6 <= c <= 6 * 5 for c in counts)  # 3 prompts x 2 rows, 1-5 tokens each
    # alignlab's sampler is seeded: every repeat samples the same completions
    assert len(set(report["completion_tokens_runs"]["alignlab_fp32"])) == 1
    assert report["alignlab_vs_transformers_fp32"] == pytest.approx(median["alignlab_fp32"] / median["transformers_fp32"])
    assert report["alignlab_bf16_vs_fp32"] == pytest.approx(median["alignlab_bf16"] / median["alignlab_fp32"])
    assert report["setup"]["rows_per_generate_call"] == 6
