"""`alignlab lab rm-accuracy`: cross-validated reward-model accuracy against the gold ceiling."""

import json
import math

import pytest
import torch
import yaml

from alignlab.cli import main
from alignlab.data.errors import DataError
from alignlab.experiments.common import read_response_groups
from alignlab.experiments.rm_accuracy import _fold_stats, _gap_interval


def test_fold_stats_by_hand():
    # pairs (chosen, rejected): the model ranks 1st and 3rd the label's way, the gold 1st, 2nd, 3rd;
    # the 4th pair is a gold tie: half a point to the ceiling (a coin-flip label), left out of the agreement
    model = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 1.0]])
    gold = torch.tensor([[0.5, 0.1], [0.3, 0.2], [0.4, 0.0], [0.2, 0.2]])
    q = torch.tensor([0.9, 0.6, 0.8, 0.5])  # P(the annotator labels each pair this way round)
    s = _fold_stats(model, gold, q)
    assert s["accuracy"] == 0.5 and s["ceiling"] == 3.5 / 4 and s["gap"] == pytest.approx(0.375)
    assert s["gold_agreement"] == pytest.approx(2 / 3)  # agrees on pairs 1 and 3 of the 3 untied ones
    # expected over the labels: the model earns q, 1-q, q, 1-q = .9 + .4 + .8 + .5; the gold q, q, q, 1/2
    assert s["expected_accuracy"] == pytest.approx(2.6 / 4) and s["expected_ceiling"] == pytest.approx(2.8 / 4)
    assert s["expected_gap"] == pytest.approx(0.05)
    tied_model = _fold_stats(torch.tensor([[1.0, 1.0]]), torch.tensor([[0.2, 0.1]]), torch.tensor([0.7]))
    assert tied_model["accuracy"] == 0.5 and tied_model["expected_accuracy"] == pytest.approx(0.5)


def test_choice_prob_is_the_annotators_label_probability():
    from alignlab.lab.annotators import BradleyTerryAnnotator

    a = BradleyTerryAnnotator(lambda texts: torch.zeros(len(texts)), temperature=0.5, flip_prob=0.1)
    p = 1 / (1 + math.exp(-0.4 / 0.5))  # gold difference 0.4 at temperature 0.5
    q = a.choice_prob(torch.tensor([0.6, 0.2]), torch.tensor([0.2, 0.2]))
    assert q.tolist() == pytest.approx([0.9 * p + 0.1 * (1 - p), 0.5])


def test_gap_interval_resamples_prompts():
    # every prompt has the same gap (1 of 4 pairs): the interval is that single value
    low, high = _gap_interval(torch.tensor([2.0, 1.0]), torch.tensor([3.0, 2.0]), torch.tensor([4.0, 4.0]), seed=0)
    assert low == pytest.approx(0.25) and high == pytest.approx(0.25)
    low, high = _gap_interval(torch.tensor([4.0, 0.0, 2.0]), torch.tensor([4.0, 4.0, 2.0]), torch.ones(3) * 4, seed=0)
    assert 0.0 <= low < 1 / 3 < high <= 1.0


def test_read_response_groups_from_samples_and_from_pairs(tmp_path):
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"prompt": "a", "response": "x"}\n{"prompt": "b", "response": "y"}\n'
                       '{"prompt": "a", "response": "x"}\n\n{"prompt": "a", "response": "z"}\n')
    prompts, groups = read_response_groups(samples)
    assert prompts == ["a", "b"] and groups == [["x", "x", "z"], ["y"]]  # samples keep repeats
    pairs = tmp_path / "pairs.jsonl"
    chat = [{"role": "user", "content": "a"}]
    pairs.write_text("\n".join(json.dumps(r) for r in [{"prompt": chat, "chosen": "x", "rejected": "y"},
                                                       {"prompt": chat, "chosen": "z", "rejected": "x"}]) + "\n")
    prompts, groups = read_response_groups(pairs)
    assert prompts == [chat] and groups == [["x", "y", "z"]]  # each distinct response once
    pairs.write_text('{"prompt": "a", "chosen": "x", "rejected": "y"}\n{"prompt": "a", "chosen": "x"}\n')
    with pytest.raises(DataError, match=r"line 2.*rejected"):
        read_response_groups(pairs)
    pairs.write_text("")
    with pytest.raises(DataError, match="no rows"):
        read_response_groups(pairs)


def test_rm_accuracy_cross_validates_every_prompt_once(tmp_path, tiny_policy_dir, capsys):
    out = tmp_path / "cv"
    args = ["lab", "rm-accuracy", "--policy", str(tiny_policy_dir), "--prompts", "6", "--samples-per-prompt", "3",
            "--max-new-tokens", "5", "--folds", "3", "--epochs", "1"]
    assert main(args + ["--output", str(out)]) == 0
    result = json.loads((out / "rm_accuracy.json").read_text())
    assert result["prompts"] == 6 and result["responses"] == 18 and result["labelled_pairs"] == 6 * 3
    assert len(result["folds"]) == 3 and all(f["prompts"] == 2 for f in result["folds"])
    assert sum(f["pairs"] for f in result["folds"]) == result["pooled"]["pairs"] == 18
    assert all(f["train_pairs"] == 12 and f["scored_truncated"] == 0 for f in result["folds"])
    p = result["pooled"]
    assert p["gap"] == pytest.approx(p["ceiling"] - p["accuracy"])
    assert p["gap_ci"][0] - 1e-9 <= p["gap"] <= p["gap_ci"][1] + 1e-9
    assert p["expected_gap_ci"][0] - 1e-9 <= p["expected_gap"] <= p["expected_gap_ci"][1] + 1e-9
    assert p["expected_gap"] == pytest.approx(p["expected_ceiling"] - p["expected_accuracy"])
    rows = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    folds_of_prompt = {}
    for r in rows:
        folds_of_prompt.setdefault(json.dumps(r["prompt"]), set()).add(r["fold"])
    assert len(folds_of_prompt) == 6 and all(len(f) == 1 for f in folds_of_prompt.values())
    assert "ceiling" in capsys.readouterr().out
    # the written samples can be reused: same responses, a new seed draws new labels and folds
    again = tmp_path / "again"
    assert main(args + ["--output", str(again), "--samples-file", str(out / "samples.jsonl"), "--seed", "1",
                        "--head-learning-rate", "1e-3", "--flip-rate", "0.1", "--group-by-prompt", "false",
                        "--batch-size", "4"]) == 0
    assert (again / "samples.jsonl").read_text() == (out / "samples.jsonl").read_text()
    for run, head_lr in ((out, 0.0), (again, 1e-3)):  # the fold models are trained with the lab's settings
        saved = yaml.safe_load((run / "rm-fold0" / "config.yaml").read_text())
        assert saved["head_learning_rate"] == head_lr and saved["learning_rate"] == 2e-4
        assert saved["flip_rate"] == (0.1 if head_lr else 0.0)
        # whole prompts per micro-batch by default (batch_size counts prompts), pair batches on request
        assert saved["group_by_prompt"] == (not head_lr) and saved["batch_size"] == (4 if head_lr else 2)
    # two models per fold from two seeds, scored by their mean; the first one is also reported alone
    two = tmp_path / "two"
    assert main(args + ["--output", str(two), "--samples-file", str(out / "samples.jsonl"), "--seeds", "2"]) == 0
    result2 = json.loads((two / "rm_accuracy.json").read_text())
    assert yaml.safe_load((two / "rm-fold2-seed1" / "config.yaml").read_text())["seed"] == 1
    # the first model is the one-seed run's: same labels, folds, seed and data, so the same accuracy
    assert result2["single_model_pooled"]["accuracy"] == pytest.approx(p["accuracy"])
    assert all("single_model" in f for f in result2["folds"]) and "single_model_pooled" not in result
    assert result2["pooled"]["pairs"] == 18
    assert main(args + ["--output", str(tmp_path / "bad"), "--seeds", "0"]) == 2
    assert main(args + ["--output", str(tmp_path / "bad"), "--folds", "1"]) == 2
    assert "folds must be >= 2" in capsys.readouterr().err
