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
    (["train", "ppo-max-turbo"], "unknown algorithm 'ppo-max-turbo'; available: dpo, pm, rm"),
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


@pytest.fixture
def nothing_loads(monkeypatch):
    """Make loading a tokenizer or model fail loudly: the checks must come before any of it."""
    import alignlab.models.load as load
    import alignlab.train.dpo as dpo

    def refuse(*args, **kwargs):
        raise AssertionError("loaded before the settings were checked")

    monkeypatch.setattr(dpo, "load_tokenizer", refuse)
    monkeypatch.setattr(load, "load_policy", refuse)


@pytest.mark.parametrize("flags,message", [
    (["--beta", "-1"], "beta must be > 0, got -1.0"),
    (["--learning-rate", "-1e-5"], "learning_rate must be > 0"),
    (["--loss", "cdpo", "--loss-options", "label_smoothing=0.7"], "label_smoothing must be a number [0, 0.5]"),
    (["--max-prompt-length", "200"], "max_prompt_length must be >= 0 and < max_length"),
    (["--lora-dropout", "1.5"], "lora_dropout must be in [0, 1)"),
    (["--keep-checkpoints", "0"], "keep_checkpoints must be >= 1"),
    (["--report-to", "mlflow"], "report_to takes tensorboard, wandb"),
])
def test_bad_settings_fail_in_one_line_before_anything_loads_or_is_written(flags, message, config_file, tmp_path,
                                                                          capsys, nothing_loads):
    """Issue 24 item 7: --dry-run included."""
    for extra in ([], ["--dry-run"]):
        assert main(["train", "dpo", "--config", str(config_file), *flags, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not (tmp_path / "run").exists()


def test_output_folder_that_is_a_file_or_read_only_fails_before_loading(config_file, tmp_path, capsys, nothing_loads,
                                                                       monkeypatch):
    import errno

    import alignlab.train.config as train_config

    taken = tmp_path / "a-file"
    taken.write_text("x")
    for target in (taken, taken / "run"):
        assert main(["train", "dpo", "--config", str(config_file), "--output-dir", str(target)]) == 2
        err = capsys.readouterr().err
        assert "is a file, not a folder" in err and err.count("\n") == 1, err

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(train_config.tempfile, "mkstemp", read_only)
    assert main(["train", "dpo", "--config", str(config_file), "--output-dir", str(tmp_path / "ro" / "run")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write in {tmp_path} (Read-only file system)" in err and err.count("\n") == 1, err
    assert main(["train", "rm", "--config", str(config_file), "--output-dir", str(tmp_path / "ro" / "run")]) == 2
    assert "Read-only file system" in capsys.readouterr().err


def test_report_to_without_its_package_fails_at_start(config_file, capsys, nothing_loads, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("tensorboard", "wandb") else real(name, *a))
    for sink, install in (("tensorboard", "pip install alignlab[tensorboard]"), ("wandb", "pip install alignlab[wandb]")):
        assert main(["train", "dpo", "--config", str(config_file), "--report-to", sink]) == 2
        err = capsys.readouterr().err
        assert f"report_to {sink} needs the {sink} package: {install}" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("columns", ["{prompt: [question", "prompt=[q", "[prompt, question]"])
def test_malformed_columns_yaml_is_one_line(columns, pairs_file, config_file, capsys):
    assert main(["data", "inspect", str(pairs_file), "--no-tokenizer", "--columns", columns]) == 2
    err = capsys.readouterr().err
    assert "'columns'" in err and err.count("\n") == 1, err
    assert main(["train", "dpo", "--config", str(config_file), "--columns", columns, "--dry-run"]) == 2
    assert "'columns'" in capsys.readouterr().err


def test_full_disk_names_the_intact_checkpoint_and_how_to_resume(config_file, tmp_path, capsys, monkeypatch):
    import errno

    import alignlab.train.checkpoint as checkpoint

    real, calls = checkpoint.save_file, []

    def fill_up(tensors, path, *args, **kwargs):
        calls.append(path)
        if len([p for p in calls if str(p).endswith("trainable.safetensors")]) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", fill_up)
    code = main(["train", "dpo", "--config", str(config_file), "--max-steps", "3", "--save-every", "1"])
    full = capsys.readouterr().err
    run = tmp_path / "run"
    err = full.splitlines()[-1]  # the lines before are the progress bars of loading the model
    assert code == 1 and "Traceback" not in full and full.count("error:") == 1
    assert err.startswith("error: no space left on device while writing ") and "step-2" in err
    assert f"the newest intact checkpoint is {run / 'checkpoints' / 'step-1'} (step 1)" in err
    assert f"--output-dir {run} --resume latest" in err
    assert (run / "checkpoints" / "step-1" / "trainable.safetensors").is_file()
