"""`alignlab demo` end to end on the real embedded SmolLM2-135M, at a tiny scale (about a minute)."""

import json

import pytest

from alignlab.cli import main


@pytest.mark.integration
def test_demo_writes_report_and_plot(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--output", str(out), "--train-prompts", "16", "--eval-prompts", "8", "--probe-prompts", "4",
                 "--max-new-tokens", "8", "--epochs", "1", "--batch-size", "4", "--probe-every", "2"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("gold_reward_before", "gold_reward_after", "win_rate_vs_reference", "kl_to_reference", "train_seconds"):
        assert isinstance(report[key], float), key
    assert 0.0 <= report["win_rate_vs_reference"] <= 1.0
    assert report["heldout_comparisons"] == 16 and report["labelling"]["pairs"] == 16
    assert len(report["curve"]) >= 2 and (out / "reward_kl.png").read_bytes()[:4] == b"\x89PNG"
    assert report["kl_to_reference"] > -0.5  # a Monte-Carlo KL estimate: near or above 0
    assert "win-rate vs base" in capsys.readouterr().out
