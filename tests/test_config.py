"""Config layering: dataclass defaults <- YAML <- flags; unknown keys and bad values are errors."""

import pytest

from alignlab.cli import parse_flags
from alignlab.config import ConfigError, differences, resolve
from alignlab.train.config import TrainConfig


def test_layering_defaults_yaml_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 2.0e-5\nbatch_size: 8\nlora: true\nreport_to: [tensorboard]\n")
    cfg = resolve(TrainConfig, path, {"batch_size": "16", "lora-r": "4"})
    assert cfg.learning_rate == 2e-5 and cfg.batch_size == 16 and cfg.lora is True and cfg.lora_r == 4
    assert cfg.report_to == ["tensorboard"] and cfg.epochs == 1.0
    assert set(differences(cfg)) == {"learning_rate", "batch_size", "lora", "lora_r", "report_to"}


def test_unknown_keys_are_errors_with_a_hint(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rat: 1.0\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'learning_rat'.*learning_rate"):
        resolve(TrainConfig, path)
    with pytest.raises(ConfigError, match="command line: unknown key 'bogus'"):
        resolve(TrainConfig, None, {"bogus": "1"})


@pytest.mark.parametrize("key,value,message", [
    ("batch_size", "four", "expects int"),
    ("batch_size", "2.5", "expects int"),
    ("lora", "maybe", "expects true/false"),
    ("truncation", "chop", "truncation must be one of"),
    ("lr_schedule", "step", "lr_schedule must be one of"),
])
def test_bad_values_are_errors(key, value, message):
    with pytest.raises(ConfigError, match=message):
        resolve(TrainConfig, None, {key: value})


def test_flag_parsing():
    assert parse_flags(["--beta", "0.2", "--lora", "--loss=ipo", "--loss-options", "a=1,b=x"]) == {
        "beta": "0.2", "lora": "true", "loss": "ipo", "loss_options": "a=1,b=x"}
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_flags(["beta", "0.2"])


def test_mapping_flags_parse_to_typed_values():
    from alignlab.train.dpo import DPOConfig

    cfg = resolve(DPOConfig, None, {"loss": "cdpo", "loss_options": "label_smoothing=0.2"})
    assert cfg.loss_options == {"label_smoothing": 0.2}
    with pytest.raises(ConfigError, match="has no option"):
        resolve(DPOConfig, None, {"loss": "cdpo", "loss_options": "alpha=0.2"})
    with pytest.raises(ConfigError, match="not a pairwise loss"):
        resolve(DPOConfig, None, {"loss": "nope"})


@pytest.mark.parametrize("key,meant", [
    ("betta", "beta"),  # edit distance 1
    ("max_lenght", "max_length"),  # a transposition
    ("lr", "learning_rate"),  # names from other tools, by the alias table
    ("num_train_epochs", "epochs"),
    ("gradient_accumulation_steps", "grad_accum"),
    ("label_smoothing", "loss_options"),
])
def test_unknown_keys_suggest_the_setting_meant(key, meant, tmp_path):
    from alignlab.train.dpo import DPOConfig

    with pytest.raises(ConfigError, match=rf"unknown key '{key}' for DPOConfig \(did you mean: {meant}[,?]"):
        resolve(DPOConfig, None, {key: "1"})
    path = tmp_path / "c.yaml"
    path.write_text(f"{key}: 1\n")
    with pytest.raises(ConfigError, match=rf"c.yaml: unknown key '{key}'.*did you mean: {meant}"):
        resolve(DPOConfig, path)


def test_no_suggestion_for_a_key_like_nothing():
    from alignlab.config import suggest

    assert suggest("bogus", ["beta", "learning_rate", "loss"]) == []
    assert suggest("lr", ["beta", "learning_rate", "lora"]) == ["learning_rate"]
