"""Online settings say what runs: held-out prompts (eval_fraction) really held out, settings the
online trainers do not read refused, help showing the method's defaults, and metrics counters
named for their unit (issue 24, items 12-14)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from alignlab.cli import main
from alignlab.config import ConfigError, to_dict
from alignlab.rewards.base import FunctionReward
from alignlab.train.online import resolve_online, split_prompts, train_online
from alignlab.train.online.batch import rollout_files
from alignlab.train.online.config import ONLINE_METHODS

PROMPTS = [{"prompt": f"Tell me about {w}."} for w in ("cats", "rain", "tea", "maps", "owls", "snow", "bread", "lamps")]


def seen_prompts(calls):
    def reward(prompts, texts):
        calls.append(list(prompts))
        return [float(len(t) % 3) for t in texts]

    return FunctionReward(reward, name="mod3")


def flags(tmp_path, **kw):
    out = dict(model="", output_dir=str(tmp_path / "run"), iterations=2, prompts_per_step=3, max_new_tokens=4,
               batch_size=8, progress=False, samples_per_prompt=2, kl_coef=0.0)
    out.update(kw)
    return out


# -- item 12: eval_fraction holds prompts out and evaluates on them ------------------------------------------
def test_eval_fraction_holds_prompts_out_of_training_and_evaluates_on_them(tmp_path, tiny_policy_dir):
    calls: list = []
    cfg = resolve_online("grpo", flags=flags(tmp_path, model=str(tiny_policy_dir), eval_fraction=0.25, eval_prompts=2,
                                             iterations=3))
    summary = train_online(cfg, train_rows=PROMPTS, rewards=seen_prompts(calls)).summary
    train, held = split_prompts(PROMPTS, 0.25, 0)
    assert len(held) == 2 and len(train) == 6 and split_prompts(PROMPTS, 0.25, 0) == (train, held)  # seeded
    held_prompts = {r["prompt"] for r in held}
    trained = {p for c in calls if len(c) == 6 for p in c}  # rollout calls: 3 prompts x 2 samples
    eval_calls = [set(c) for c in calls if len(c) == 2]
    assert trained and not trained & held_prompts  # never trained on
    assert eval_calls and all(c == held_prompts for c in eval_calls)  # evaluated on exactly those
    assert "reward" in summary["eval_before"] and "reward" in summary["final_eval"]


def test_eval_fraction_with_another_held_out_set_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="eval_data is set"):
        resolve_online("grpo", flags={"eval_fraction": 0.2, "eval_data": "x.jsonl"})
    with pytest.raises(ConfigError, match="own eval split"):
        resolve_online("grpo", flags={"eval_fraction": 0.2, "train_data": "lab:sentiment"})
    with pytest.raises(ConfigError, match="leaves none to train on"):
        split_prompts(PROMPTS[:1], 0.5, 0)


def test_eval_settings_without_held_out_prompts_are_refused(tmp_path, tiny_policy_dir, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    assert main(["train", "grpo", "--train-data", str(prompts), "--eval-prompts", "8", "--dry-run"]) == 2
    assert "eval_prompts is set but there are no held-out prompts" in capsys.readouterr().err
    assert main(["train", "grpo", "--train-data", str(prompts), "--eval-prompts", "8", "--eval-fraction", "0.25",
                 "--dry-run"]) == 0
    cfg = resolve_online("grpo", flags=flags(tmp_path, model=str(tiny_policy_dir), eval_every=1))
    with pytest.raises(ConfigError, match="eval_every is set"):
        train_online(cfg, train_rows=PROMPTS, rewards=seen_prompts([]))
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("setting,value", [("epochs", 3), ("pairing", "best_vs_random"), ("data_format", "dpo"),
                                           ("columns", {"prompt": "q"}), ("skip_invalid", True),
                                           ("max_prompt_length", 64), ("truncation", "drop"), ("max_length", 128)])
def test_inherited_settings_the_online_trainers_do_not_read_are_refused(setting, value):
    with pytest.raises(ConfigError, match=f"^{setting} is set but grpo training does not read it"):
        resolve_online("grpo", flags={setting: value})


def test_method_specific_settings_are_refused_where_the_method_ignores_them():
    with pytest.raises(ConfigError, match="vf_coef is set but grpo .* has no critic"):
        resolve_online("grpo", flags={"vf_coef": 0.5})
    with pytest.raises(ConfigError, match="scale_rewards"):
        resolve_online("rloo", flags={"scale_rewards": False})
    with pytest.raises(ConfigError, match="cost_threshold .* ppo_lagrangian only"):
        resolve_online("ppo", flags={"cost_threshold": 1.0})
    assert resolve_online("ppo", flags={"vf_coef": 0.5, "max_length": 128, "ptx_data": "d.jsonl", "ptx_coef": 1.0})


# -- item 13: help, dry run and run show the same effective values ------------------------------------------
@pytest.mark.parametrize("method", sorted(ONLINE_METHODS))
def test_help_settings_shows_the_values_the_run_uses(method, capsys):
    assert main(["train", method, "--help-settings"]) == 0
    help_text = capsys.readouterr().out
    extra = {"cost": "python:m:f"} if method == "ppo_lagrangian" else {}
    effective = to_dict(resolve_online(method, flags=extra))  # what the dry run prints and the run uses
    for name, value in effective.items():
        if name in extra:
            continue
        line = re.search(rf"^  --{name.replace('_', '-')} .*$", help_text, re.M).group(0)
        assert f"[default: {value!r}]" in line, (name, line)
    if method == "grpo":
        assert re.search(r"--kl-coef .*\[default: 0\.04\]", help_text)
        assert re.search(r"--kl-mode .*\[default: 'loss'\]", help_text)


def test_dry_run_and_run_record_the_methods_defaults(tmp_path, tiny_policy_dir, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    assert main(["train", "grpo", "--train-data", str(prompts), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "KL 0.04 as loss (k3)" in printed and "kl_coef: 0.04  (grpo default)" in printed
    out = tmp_path / "run"
    assert main(["train", "grpo", "--model", str(tiny_policy_dir), "--train-data", str(prompts), "--iterations", "1",
                 "--prompts-per-step", "2", "--max-new-tokens", "4", "--output-dir", str(out), "--progress",
                 "false", "--reward", "lab:length"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved = saved.get("config", saved)
    assert saved["kl_coef"] == 0.04 and saved["kl_mode"] == "loss" and saved["kl_estimator"] == "k3"


# -- item 14: metrics counters named for their unit ----------------------------------------------------------
@pytest.mark.parametrize("method,reduction,unit", [("grpo", "token_mean", "tokens"),
                                                   ("grpo", "seq_mean_token_mean", "sequences"),
                                                   ("p3o", "token_mean", "pairs")])
def test_online_metrics_count_in_the_methods_unit(tmp_path, tiny_policy_dir, method, reduction, unit):
    from alignlab.train.online.batch import RolloutBatch

    cfg = resolve_online(method, flags=flags(tmp_path, model=str(tiny_policy_dir), iterations=1, prompts_per_step=4,
                                             batch_size=16, loss_reduction=reduction))
    train_online(cfg, train_rows=PROMPTS, eval_rows=PROMPTS[:1], rewards=seen_prompts([]))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    steps = [r for r in rows if "loss" in r]
    assert steps and all("examples_seen" not in r and "examples_per_second" not in r for r in rows)
    batch = RolloutBatch.load(rollout_files(tmp_path / "run" / "rollouts")[0])
    want = {"tokens": int(batch.mask.sum()), "sequences": int((batch.mask.sum(-1) > 0).sum()),
            "pairs": len(batch) // 2}[unit]
    assert steps[-1][f"{unit}_seen"] == want and f"{unit}_per_second" in steps[-1]


def test_a_config_built_in_python_takes_the_methods_defaults_too(tmp_path):
    from alignlab.train.online import OnlineConfig

    cfg = OnlineConfig(method="grpo", output_dir=str(tmp_path / "run"), iterations=1)
    text = train_online(cfg, train_rows=PROMPTS, dry_run=True).dry_run_text
    assert "kl_coef: 0.04  (grpo default)" in text and "kl_mode: 'loss'  (grpo default)" in text
    assert "iterations: 1  (user; default 10)" in text and not (tmp_path / "run").exists()
