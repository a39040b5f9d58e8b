"""`alignlab train <online method>` from the command line, in seconds on a tiny random policy."""

from __future__ import annotations

import json

import pytest

from alignlab.cli import main

REWARD_MODULE = '''
def letters(prompts, responses):
    """Share of alphabetic characters: a cheap verifiable reward for the smoke test."""
    return [sum(c.isalpha() for c in r) / max(len(r), 1) for r in responses]
'''


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"Tell me about {w}."} for w in ("cats", "rain", "tea", "maps", "owls", "snow")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "smoke_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "python:smoke_rewards:letters"


@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_train_online_method_from_the_command_line(tmp_path, tiny_policy_dir, prompts_file, reward_module, capsys,
                                                   method):
    out = tmp_path / "run"
    code = main(["train", method, "--model", str(tiny_policy_dir), "--train-data", str(prompts_file),
                 "--eval-data", str(prompts_file), "--reward", reward_module, "--iterations", "2",
                 "--prompts-per-step", "3", "--samples-per-prompt", "2", "--max-new-tokens", "6", "--batch-size", "6",
                 "--eval-prompts", "3", "--output-dir", str(out), "--progress", "false"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"{method} done: " in printed and "eval reward:" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["completions"] == 12
    assert (out / "final" / "model.safetensors").is_file()
    assert len(list((out / "rollouts").glob("iter-*.safetensors"))) == 2
    if method == "ppo":
        assert (out / "final" / "value_head.safetensors").is_file()


def test_dry_run_help_settings_and_bad_settings(tmp_path, capsys, prompts_file):
    assert main(["train", "grpo", "--train-data", str(prompts_file), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "grpo" in printed and "samples_per_prompt: 4  (grpo default)" in printed  # paper defaults, named so
    assert "kl_estimator: 'k3'  (grpo default)" in printed and not (tmp_path / "runs").exists()
    assert main(["train", "rloo", "--help-settings"]) == 0
    assert "--kl-mode" in capsys.readouterr().out
    assert main(["train", "grpo", "--samples-per-prompt", "1", "--train-data", str(prompts_file), "--dry-run"]) == 2
    assert "group baseline" in capsys.readouterr().err
    assert main(["train", "ppo_lagrangian", "--train-data", str(prompts_file), "--dry-run"]) == 2
    assert "cost source" in capsys.readouterr().err
    assert main(["train", "grpo", "--method", "ppo", "--dry-run"]) == 2
    assert "set by the command" in capsys.readouterr().err


def test_method_defaults_then_preset_then_yaml_then_flags(tmp_path):
    from alignlab.train.online import resolve_online

    cfg = resolve_online("ppo", flags={"preset": "ppo_max"})
    assert cfg.reward_normalize and cfg.reward_clip == 5.0 and cfg.value_clip == 0.2 and cfg.kl_mode == "reward"
    assert resolve_online("grpo").kl_estimator == "k3" and resolve_online("grpo").samples_per_prompt == 4
    yaml = tmp_path / "c.yaml"
    yaml.write_text("preset: ppo_max\nreward_clip: 2.0\nkl_coef: 0.2\n")
    cfg = resolve_online("ppo", yaml, {"kl_coef": "0.3"})
    assert cfg.reward_clip == 2.0 and cfg.kl_coef == 0.3 and cfg.reward_normalize  # yaml over preset, flags over yaml
