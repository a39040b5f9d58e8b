"""`alignlab lab judge-agreement`: its scoring by hand, and one tiny end-to-end run."""

import json

import pytest
import torch

from alignlab.cli import main
from alignlab.experiments.judge_agreement import agreement_credit, held_out_pairs, prompt_interval


def test_agreement_credit_and_held_out_pairs_by_hand():
    p = torch.tensor([0.9, 0.2, 0.5, 0.4], dtype=torch.float64)
    gold_diff = torch.tensor([0.3, 0.1, -0.2, -0.5], dtype=torch.float64)
    assert agreement_credit(p, gold_diff).tolist() == [1.0, 0.0, 0.5, 1.0]
    scores = {"good": 1.0, "bad": -1.0, "meh": 0.0, "meh2": 0.0}
    pairs = held_out_pairs(["q"], [["good", "meh", "meh2", "bad"]], lambda g: torch.tensor([scores[t] for t in g]))
    # 6 pairs, the gold-tied (meh, meh2) left out; a is always the earlier response
    assert [(a, b, d) for _, a, b, d in pairs] == [("good", "meh", 1.0), ("good", "meh2", 1.0), ("good", "bad", 2.0),
                                                  ("meh", "bad", 1.0), ("meh2", "bad", 1.0)]
    same = prompt_interval(torch.ones(4, dtype=torch.float64), torch.tensor([0, 0, 1, 1]), seed=0)
    assert same == pytest.approx([1.0, 1.0])


def test_judge_agreement_runs_end_to_end_on_tiny_models(tmp_path, tiny_encoder_dir, tiny_policy_dir, capsys):
    texts = ["I love it, wonderful!", "It is terrible and sad.", "It is a table.", "Great, happy, fantastic day."]
    with (tmp_path / "samples.jsonl").open("w") as f:
        for i in range(5):
            for t in texts:
                f.write(json.dumps({"prompt": f"Write about thing {i}.", "response": t}) + "\n")
    out = tmp_path / "out"
    args = ["lab", "judge-agreement", "--samples-file", str(tmp_path / "samples.jsonl"), "--train-prompts", "3",
            "--test-prompts", "2", "--rm-model", str(tiny_encoder_dir), "--judge", f"judge:{tiny_policy_dir}",
            "--epochs", "1", "--batch-size", "8", "--output", str(out)]
    assert main(args) == 0
    result = json.loads((out / "judge_agreement.json").read_text())
    assert (out / "judge_agreement.png").stat().st_size > 0
    assert result["train_pairs"] == 3 * 6 and result["test_pairs"] == 2 * 6  # no gold ties among these four
    assert set(result["sources"]) == {"reward model (Bradley-Terry)", "pairwise preference model",
                                      f"LLM judge (judge:{tiny_policy_dir})"}
    for r in result["sources"].values():
        assert 0.0 <= r["interval"][0] <= r["agreement"] <= r["interval"][1] <= 1.0
    assert "agreement with the gold preference on 12 held-out pairs" in capsys.readouterr().out
    assert main(["lab", "judge-agreement", "--judge", "nonsense:x", "--output", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists()
