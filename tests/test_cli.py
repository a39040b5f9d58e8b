"""The command line end to end, in-process, on a tiny random model with SmolLM2's tokenizer."""

import json

import pytest

from alignlab.cli import main

TOPICS = ["cats", "rain", "tea", "maps", "trains", "bread", "snow", "music"]


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"Tell me about {t}.", "chosen": f"I love {t}.", "rejected": f"No {t}."} for t in TOPICS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def config_file(tmp_path, tiny_policy_dir, pairs_file):
    path = tmp_path / "dpo.yaml"
    path.write_text(
        f"model: {tiny_policy_dir}\ntrain_data: {pairs_file}\noutput_dir: {tmp_path / 'run'}\n"
        "batch_size: 4\nmax_length: 128\nlearning_rate: 1.0e-3\nprogress: false\n"
    )
    return path


def test_train_dpo_from_yaml_with_flag_overrides(config_file, tmp_path, capsys):
    assert main(["train", "dpo", "--config", str(config_file), "--loss", "ipo", "--beta", "0.2", "--max-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "model saved to" in out
    final = tmp_path / "run" / "final"
    assert (final / "config.json").is_file() and (final / "model.safetensors").is_file()
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "loss: ipo" in saved and "beta: 0.2" in saved
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]


def test_dry_run_explains_and_trains_nothing(config_file, tmp_path, capsys):
    assert main(["train", "dpo", "--config", str(config_file), "--dry-run", "--lora"]) == 0
    out = capsys.readouterr().out
    assert "4 per device x 1 accumulation" in out and "8 train pairs -> 2 micro-batches" in out
    assert "lora: True  (user; default False)" in out
    assert not (tmp_path / "run" / "final").exists()


def test_help_settings_lists_every_setting_with_its_default(capsys):
    assert main(["train", "dpo", "--help-settings"]) == 0
    out = capsys.readouterr().out
    assert "--beta" in out and "simpo 2.0" in out and "--truncation" in out


@pytest.mark.parametrize("argv,message", [
    (["train", "ppo-max-turbo"], "unknown algorithm 'ppo-max-turbo'; available: dpo, rm"),
    (["train", "dpo", "--betta", "0.1"], "unknown key 'betta'"),
    (["train", "dpo", "--loss", "dpoo"], "not a pairwise loss"),
])
def test_bad_commands_fail_with_a_clear_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_offline_hub_id_says_how_to_use_a_local_folder(pairs_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["train", "dpo", "--model", "nobody-here/no-such-model", "--train-data", str(pairs_file),
                 "--output-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1
    assert "not a local folder" in err and "--model DIR" in err


def test_bad_data_line_is_named(config_file, pairs_file, capsys):
    pairs_file.write_text(pairs_file.read_text() + '{"prompt": "x", "chosen": 3, "rejected": "y"}\n')
    assert main(["train", "dpo", "--config", str(config_file)]) == 1
    err = capsys.readouterr().err
    assert "prefs.jsonl" in err and "line 9" in err and "chosen" in err


def test_data_inspect_reports_format_counts_and_lengths(pairs_file, tiny_policy_dir, capsys):
    pairs_file.write_text(pairs_file.read_text() + json.dumps({"prompt": "x", "chosen": "same", "rejected": "same"}) + "\n")
    assert main(["data", "inspect", str(pairs_file), "--model", str(tiny_policy_dir), "--max-length", "30"]) == 0
    out = capsys.readouterr().out
    assert "pairwise" in out and "9" in out
    assert "chosen == rejected" in out
