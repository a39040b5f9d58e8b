"""Loading policies (the embedded default, a local folder, or a hub id when online), LoRA, and
saving a final model that plain `transformers`/`peft` can load."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from alignlab.models.embedded import POLICY_NAME, embedded_policy_dir

EMBEDDED_NAMES = ("embedded", POLICY_NAME, "HuggingFaceTB/SmolLM2-135M-Instruct")


class ModelSourceError(RuntimeError):
    pass


def resolve_model_path(name: str) -> str:
    """'embedded' -> the cached embedded folder; an existing folder -> itself; else a hub id."""
    if not name or name in EMBEDDED_NAMES:
        return str(embedded_policy_dir())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model folder {path} has no config.json (expected a save_pretrained folder)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelSourceError(f"model '{name}' is neither an existing folder nor a hub id of the form owner/name")
    return name


def _hub_error(name: str, exc: Exception) -> ModelSourceError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(exc).lower() or "connect" in str(exc).lower()
    why = "the hub cannot be reached (offline)" if offline else f"loading it failed: {exc}"
    return ModelSourceError(
        f"model '{name}' is not a local folder and {why}. Download it on a machine with internet "
        f"(`hf download {name} --local-dir DIR`), copy DIR here and pass `--model DIR`; "
        "or use `--model embedded` for the built-in SmolLM2-135M-Instruct."
    )


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    source = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise _hub_error(name, exc) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(name: str, *, dtype: torch.dtype = torch.float32):
    """A causal LM in training layout (sdpa attention, which honours alignlab's 4-D masks)."""
    from transformers import AutoModelForCausalLM

    source = resolve_model_path(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="sdpa")
    except OSError as exc:
        raise _hub_error(name, exc) from exc
    except ValueError:  # architectures without sdpa: eager honours additive 4-D masks too
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="eager")
    model.config.use_cache = False
    return model


def lora_targets(target_modules: list[str]):
    """peft's `target_modules`: its "all-linear" shorthand is a string, never a list element."""
    return "all-linear" if list(target_modules) == ["all-linear"] else list(target_modules)


def add_lora(model, *, r: int, alpha: int, dropout: float, target_modules: list[str]):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_targets(target_modules),
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def reference_context(model):
    """Context under which `model` computes the reference policy: LoRA adapter disabled."""
    if is_peft(model):
        return model.disable_adapter()
    import contextlib

    return contextlib.nullcontext()


def save_final(model, tokenizer, directory: Path, *, merge_lora: bool = False) -> Path:
    """`save_pretrained` layout: a PEFT adapter folder, or a full model (merged if asked)."""
    directory.mkdir(parents=True, exist_ok=True)
    if is_peft(model) and merge_lora:
        model = model.merge_and_unload()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
