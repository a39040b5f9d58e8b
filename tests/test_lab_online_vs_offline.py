"""`lab online-vs-offline` end to end on a tiny random policy (seconds): the comparison is fair
(equal labels counted in the run folders, equal β and steps) and the JSON holds what it says."""

import json
from pathlib import Path

import pytest
import yaml

from alignlab.cli import main
from alignlab.experiments.online_vs_offline import t_interval

ARGS = ["--iterations", "2", "--prompts-per-step", "4", "--batch-size", "2", "--epochs", "1", "--eval-prompts", "3",
        "--eval-samples", "1", "--max-new-tokens", "5", "--seeds", "2", "--seed", "3", "--beta", "0.2"]


def _labels_in_folders(run: dict) -> int:
    """Labelled pairs as the run folder holds them: online RUN/pairs/iter-*.jsonl, offline pairs.jsonl."""
    run_dir = Path(run["run_dir"])
    files = sorted((run_dir / "pairs").glob("iter-*.jsonl")) if run["arm"] == "online" else [run_dir.parent / "pairs.jsonl"]
    assert files
    return sum(len(f.read_text().splitlines()) for f in files)


def test_online_vs_offline_spends_equal_labels_beta_and_steps(tmp_path, tiny_policy_dir, capsys):
    out = tmp_path / "lab"
    assert main(["lab", "online-vs-offline", "--policy", str(tiny_policy_dir), "--output", str(out), *ARGS]) == 0
    result = json.loads((out / "online_vs_offline.json").read_text())
    runs = result["runs"]
    assert [(r["seed"], r["arm"]) for r in runs] == [(3, "offline"), (3, "online"), (4, "offline"), (4, "online")]
    assert result["label_budget"] == 8
    for r in runs:
        # each comparison the annotator answered is one pair on disk: 2 iterations x 4 prompts
        assert r["labels"] == r["pairs"] == _labels_in_folders(r) == 8
        assert r["steps"] == 4  # 8 pairs / 2 per step, one pass
        assert r["beta"] == 0.2
        assert r["kl"] == pytest.approx(r["kl"]) and -1 <= r["gold_reward"] <= 1
    online = yaml.safe_load((Path(runs[1]["run_dir"]) / "config.yaml").read_text())
    offline = yaml.safe_load((Path(runs[0]["run_dir"]) / "config.yaml").read_text())
    assert online["kl_coef"] == offline["beta"] == 0.2
    shared = ("learning_rate", "lr_schedule", "warmup_ratio", "weight_decay", "max_grad_norm", "grad_accum", "lora",
              "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "precision", "seed")
    assert {k: online[k] for k in shared} == {k: offline[k] for k in shared}
    assert online["batch_size"] == 2 * offline["batch_size"]  # online counts completions, 2 a pair
    assert online["ppo_epochs"] == offline["epochs"] == 1 and online["samples_per_prompt"] == 2
    assert online["preference_loss"] == offline["loss"] == "dpo"
    # online pairs come from 2 iterations; the policy that sampled iteration 1 had trained on iteration 0
    iters = {json.loads(line)["iteration"] for f in (Path(runs[1]["run_dir"]) / "pairs").glob("iter-*.jsonl")
             for line in f.read_text().splitlines()}
    assert iters == {0, 1}
    # both arms of a seed label the same prompts, each once
    def prompts_of(files):
        return sorted(json.dumps(json.loads(line)["prompt"]) for f in files for line in f.read_text().splitlines())
    online_prompts = prompts_of(sorted((Path(runs[1]["run_dir"]) / "pairs").glob("iter-*.jsonl")))
    assert online_prompts == prompts_of([Path(runs[0]["run_dir"]).parent / "pairs.jsonl"])
    assert len(set(online_prompts)) == 8
    # seeds draw different prompts / samples: the offline pairs differ
    pairs = [(Path(r["run_dir"]).parent / "pairs.jsonl").read_text() for r in runs if r["arm"] == "offline"]
    assert pairs[0] != pairs[1]
    assert [b["kl"] for b in result["base"]] == [0.0, 0.0]  # the base model is its own reference
    s = result["summary"]
    for arm in ("offline", "online", "online_minus_offline"):
        for key in ("gold_reward", "kl"):
            lo, hi = s[arm][key]["ci95"]
            assert lo <= s[arm][key]["mean"] <= hi and s[arm][key]["n"] == 2
    diff = [on["gold_reward"] - off["gold_reward"] for off, on in zip(runs[0::2], runs[1::2])]
    assert s["online_minus_offline"]["gold_reward"]["mean"] == pytest.approx(sum(diff) / 2)
    assert (out / "online_vs_offline.png").is_file()
    assert "Offline vs online DPO" in capsys.readouterr().out


def test_t_interval_matches_hand_computation():
    # values 1, 2, 3: mean 2, sd 1, t_{0.975, 2} = 4.302653, half-width 4.302653 / sqrt(3) = 2.484138
    ci = t_interval([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["ci95"] == pytest.approx([2 - 2.484138, 2 + 2.484138], abs=1e-6)
    assert t_interval([5.0])["ci95"] == [5.0, 5.0]


def test_steps_must_divide_evenly(tmp_path, tiny_policy_dir, capsys):
    code = main(["lab", "online-vs-offline", "--policy", str(tiny_policy_dir), "--output", str(tmp_path / "x"),
                 "--prompts-per-step", "5", "--batch-size", "2"])
    assert code != 0
    assert "multiple of batch_size" in capsys.readouterr().err
