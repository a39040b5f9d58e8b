"""Config dataclasses: defaults, then YAML, then `--key value` flags. Unknown keys are errors.

One dataclass per algorithm (see `alignlab.train.*`); each field is documented once, in a
comment-free way: by the string in its `metadata["help"]`, which the CLI shows in `--help`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    pass


def field(default: Any, help: str, **kwargs) -> Any:
    """A dataclass field with its one-line documentation."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(name: str, value: Any, annotation: Any, source: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type, or fail clearly."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{source}: '{name}' = {value!r} does not fit {annotation}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{source}: '{name}' expects true/false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{source}: '{name}' expects a number, got {value!r}")
        try:
            number = annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: '{name}' expects {annotation.__name__}, got {value!r}") from None
        if annotation is int and isinstance(value, float) and value != int(value):
            raise ConfigError(f"{source}: '{name}' expects an integer, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{source}: '{name}' expects a string, got {value!r}")
        return str(value)
    if origin is dict or annotation is dict:
        if isinstance(value, str):
            value = _parse_mapping(name, value, source)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{name}' expects a mapping, got {value!r}")
        return dict(value)
    if origin is list or annotation is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{source}: '{name}' expects a list, got {value!r}")
        return list(value)
    return value


def _parse_mapping(name: str, text: str, source: str) -> dict:
    """`a=1,b=x` or a JSON/YAML mapping, for dict-valued flags such as `--loss-options`."""
    text = text.strip()
    if text.startswith("{"):
        value = _safe_yaml(name, text, source)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{name}' expects a mapping like {{a: 1, b: x}}, got {text!r}")
        return value
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in item:
            raise ConfigError(f"{source}: '{name}' expects key=value pairs or a mapping like {{a: 1}}, got {item!r}")
        key, raw = item.split("=", 1)
        out[key.strip()] = _safe_yaml(name, raw, source)
    return out


def _safe_yaml(name: str, text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: '{name}' is not valid YAML ({problem}): {text!r}") from None


# Names other tools (transformers' TrainingArguments, TRL, PEFT, OpenRLHF) use for alignlab settings.
ALIASES = {
    "lr": "learning_rate", "num_train_epochs": "epochs", "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "train_batch_size": "batch_size", "micro_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "lr_scheduler_type": "lr_schedule", "lr_scheduler": "lr_schedule",
    "max_seq_length": "max_length", "max_len": "max_length", "bf16": "precision", "fp16": "precision",
    "mixed_precision": "precision", "model_name_or_path": "model", "pretrain": "model", "output": "output_dir",
    "dataset": "train_data", "train_file": "train_data", "data": "train_data", "eval_file": "eval_data",
    "eval_dataset": "eval_data", "save_steps": "save_every", "eval_steps": "eval_every", "logging_steps": "log_every",
    "save_total_limit": "keep_checkpoints", "resume_from_checkpoint": "resume", "lora_rank": "lora_r",
    "loss_type": "loss", "label_smoothing": "loss_options", "gamma": "loss_options",
    "simpo_gamma": "loss_options", "target_modules": "lora_target_modules", "report": "report_to",
    "use_peft": "lora", "use_lora": "lora", "warmup": "warmup_ratio", "grad_norm": "max_grad_norm",
}


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions to turn a into b."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def suggest(key: str, names: list[str], limit: int = 3) -> list[str]:
    """The names a mistyped `key` probably meant: an alias from another tool's vocabulary, then
    names within a small edit distance (about a third of the key's length), closest first."""
    out = [ALIASES[key]] if ALIASES.get(key) in names else []
    budget = max(1, len(key) // 3)
    scored = sorted((edit_distance(key, n), n) for n in names)
    out += [n for d, n in scored if d <= budget and n not in out]
    out += [n for n in names if len(key) >= 4 and n.startswith(key) and n not in out]
    return out[:limit]


def apply_overrides(config, overrides: dict[str, Any], source: str, *, validate: bool = True):
    """Return a copy of `config` with `overrides` applied; unknown keys raise ConfigError. With
    validate=False the caller validates once after its last layer."""
    types_ = _field_types(type(config))
    changes = {}
    for raw_key, value in overrides.items():
        key = raw_key.replace("-", "_")
        if key not in types_:
            close = suggest(key, list(types_))
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{raw_key}' for {type(config).__name__}{hint}")
        changes[key] = _coerce(key, value, types_[key], source)
    new = dataclasses.replace(config, **changes)
    check = getattr(new, "validate", None)
    if validate and check is not None:
        check()
    return new


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


USER, DEFAULT = "user", "default"


def resolve(cls, yaml_path: str | Path | None = None, flags: dict[str, Any] | None = None):
    """Layering: dataclass defaults <- the config's own context defaults (e.g. the chosen loss's
    paper values) <- YAML file <- flags. The keys the YAML or the flags gave are recorded, so
    `sources(config)` says where every setting came from."""
    config, given = cls(), set()
    if yaml_path:
        data = load_yaml(yaml_path)
        config = apply_overrides(config, data, str(yaml_path), validate=False)
        given |= {k.replace("-", "_") for k in data}
    if flags:
        config = apply_overrides(config, flags, "command line", validate=False)
        given |= {k.replace("-", "_") for k in flags}
    config = fill_defaults(config, given)
    check = getattr(config, "validate", None)
    if check is not None:
        check()
    return config


def fill_defaults(config, given: set[str] | None = None):
    """A copy of `config` whose settings the user did not give take the values the config's
    `context_defaults(given)` hook returns ({key: (value, origin)}, e.g. beta from the chosen
    loss), with `sources(config)` recorded. `given` is the set of user-given keys; None (a config
    built in Python) means: the keys whose value differs from the dataclass default. A config
    already filled is returned as is."""
    if getattr(config, "_sources", None) is not None:
        return config
    if given is None:
        given = set(differences(config))
    hook = getattr(config, "context_defaults", None)
    context = hook(frozenset(given)) if hook is not None else {}
    new = dataclasses.replace(config, **{k: v for k, (v, _) in context.items()})
    origins = {f.name: USER if f.name in given else DEFAULT for f in dataclasses.fields(new)}
    origins.update({k: origin for k, (_, origin) in context.items()})
    object.__setattr__(new, "_sources", origins)  # not a field: kept out of saves, help and equality
    return new


def sources(config) -> dict[str, str]:
    """Where each setting's value came from: "user" (YAML or flags), "default" (the dataclass
    default) or the origin a context default named (e.g. "simpo loss default")."""
    recorded = getattr(config, "_sources", None)
    if recorded is not None:
        return dict(recorded)
    changed = differences(config)
    return {f.name: USER if f.name in changed else DEFAULT for f in dataclasses.fields(config)}


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def differences(config) -> dict[str, tuple[Any, Any]]:
    """Settings that differ from the dataclass defaults: {name: (default, value)}."""
    default = type(config)()
    return {
        f.name: (getattr(default, f.name), getattr(config, f.name))
        for f in dataclasses.fields(config)
        if getattr(default, f.name) != getattr(config, f.name)
    }


def save(config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(json.loads(json.dumps(to_dict(config))), sort_keys=False))


def config_help(cls, title: str | None = None) -> str:
    """Every setting of the config dataclass `cls` with its help and default, for --help-settings."""
    lines = [title or f"settings of {cls.__name__} (YAML keys or --flags):"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  --{f.name.replace('_', '-'):<24} {f.metadata.get('help', '')} [default: {default!r}]")
    return "\n".join(lines)
