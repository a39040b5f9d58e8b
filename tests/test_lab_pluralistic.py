"""`alignlab lab pluralistic`: the CLI end to end on tiny settings, and its bookkeeping."""

import json

import pytest
import torch

from alignlab.cli import main
from alignlab.experiments.pluralistic import MODELS, POLICIES, _interval, group_recovery

TINY = ["--groups", "effusive=4,concise=2", "--train-prompts", "10", "--eval-prompts", "5", "--pairs-per-user", "15",
        "--heldout-pairs-per-user", "10", "--vpl-steps", "20", "--prlhf-steps", "20", "--seeds", "2"]


def test_cli_writes_per_group_gold_and_accuracy(tmp_path, capsys):
    assert main(["lab", "pluralistic", *TINY, "--output", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "pluralistic.json").read_text())
    assert (tmp_path / "pluralistic.png").stat().st_size > 1000
    s = result["summary"]
    assert set(s["policy_gold"]) == set(POLICIES) and set(s["accuracy"]) == set(MODELS)
    for run in result["runs"]:
        # the reference policy's gold is the pool's plain average; the KL-0 policy is the reference
        assert run["policy_kl"]["reference"] == 0.0 and run["policy_kl"]["single"] > 0
        assert all(0.0 <= a <= 1.0 for m in MODELS for a in run["accuracy"][m])
        assert run["maxmin_duality_gap"] < 1e-5 and abs(sum(run["maxmin_group_weights"]) - 1) < 1e-5
    assert s["accuracy"]["single"]["effusive"]["values"] == [r["accuracy"]["single"][0] for r in result["runs"]]
    assert "Held-out preference accuracy" in capsys.readouterr().out


def test_cli_rejects_an_unknown_group_before_any_work(tmp_path, capsys):
    assert main(["lab", "pluralistic", "--groups", "effusive=4,grumpy=2", "--output", str(tmp_path / "x")]) == 2
    assert "unknown group 'grumpy'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["lab", "pluralistic", "--groups", "effusive=4,concise=2", "--mixture-groups", "7",
                 "--output", str(tmp_path / "y")]) == 2
    assert "mixture_groups (7) cannot exceed the users (6)" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_group_recovery_up_to_relabelling():
    truth = torch.tensor([0, 0, 0, 1, 1])
    assert group_recovery(torch.tensor([1, 1, 1, 0, 0]), truth, 2, 2) == 1.0
    assert group_recovery(torch.tensor([1, 1, 0, 0, 0]), truth, 2, 2) == pytest.approx(0.8)
    # three found groups, two true ones: each found group counts its majority true group
    assert group_recovery(torch.tensor([0, 2, 2, 1, 1]), truth, 3, 2) == 1.0


def test_interval_is_a_student_t_interval():
    s = _interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t_{0.975, 2} = 4.303
    assert s["mean"] == 2.0 and s["ci"] == pytest.approx([2 - 4.3027 / 3**0.5, 2 + 4.3027 / 3**0.5], abs=1e-3)
