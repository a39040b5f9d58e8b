"""Loading policies (the embedded default, a local folder, or a hub id when online), LoRA, and
saving a final model that plain `transformers`/`peft` can load."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from alignlab.fingerprint import file_sha256
from alignlab.models.embedded import POLICY_NAME, cache_dir, embedded_policy_dir
from alignlab.models.trunk import layer_list

EMBEDDED_NAMES = ("embedded", POLICY_NAME, "HuggingFaceTB/SmolLM2-135M-Instruct")


class ModelSourceError(RuntimeError):
    pass


EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def resolve_model_path(name: str) -> str:
    """'embedded' -> the cached embedded folder; an existing folder -> itself; a LoRA adapter
    folder -> its base with the adapter merged in (cached, see `merged_adapter_dir`); else a hub id."""
    if not name or name in EMBEDDED_NAMES:
        return str(embedded_policy_dir())
    path = Path(name).expanduser()
    if path.exists():
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            return str(merged_adapter_dir(path))
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model folder {path} has no config.json (expected a save_pretrained folder)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelSourceError(f"model '{name}' is neither an existing folder nor a hub id of the form owner/name")
    return name


def portable_name(name_or_path: str) -> str:
    """The base-model name a saved adapter records: the embedded model's hub id instead of its
    machine-local cache folder; anything else as the user gave it."""
    if not name_or_path or name_or_path in EMBEDDED_NAMES:
        return EMBEDDED_HUB_ID
    embedded_cache = cache_dir() / "models" / POLICY_NAME
    try:
        if Path(name_or_path).expanduser().resolve() == embedded_cache.resolve():
            return EMBEDDED_HUB_ID
    except OSError:
        pass
    return name_or_path


def merged_adapter_dir(adapter: Path) -> Path:
    """A plain model folder of `adapter`'s base with the adapter merged in, built once and cached
    under the alignlab cache (keyed by the adapter's content), so that an adapter folder works
    wherever a model folder does (training, sampling, reward-model backbones, evaluation)."""
    try:
        base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelSourceError(f"{adapter / 'adapter_config.json'}: cannot read its base_model_name_or_path ({exc})") from None
    target = cache_dir() / "merged" / f"{adapter.resolve().name}-{file_sha256(adapter)[:16]}"
    if (target / "config.json").is_file():
        return target
    from peft import PeftModel

    print(f"alignlab: merging LoRA adapter {adapter} into its base {base} (once; cached in {target})")
    model = PeftModel.from_pretrained(load_policy(base), str(adapter)).merge_and_unload()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    model.save_pretrained(tmp)
    from transformers import AutoTokenizer

    tokenizer_source = adapter if (adapter / "tokenizer_config.json").is_file() else resolve_model_path(base)
    AutoTokenizer.from_pretrained(str(tokenizer_source)).save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process merged it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
    # what a LoRA adapter trained on this model records as its base (peft reads name_or_path)
    model.name_or_path = model.config._name_or_path = portable_name(name)
    return model


def lora_targets(target_modules: list[str]):
    """peft's `target_modules`: its "all-linear" shorthand is a string, never a list element."""
    return "all-linear" if list(target_modules) == ["all-linear"] else list(target_modules)


def lora_layers(config, top: int) -> list[int] | None:
    """peft's `layers_to_transform` for LoRA on the top `top` layers of a model with `config`
    (None: every layer)."""
    if not top:
        return None
    n = getattr(config, "num_hidden_layers", None)
    if n is None:
        raise ValueError(f"lora_layers: {type(config).__name__} does not say how many layers it has (num_hidden_layers)")
    if not 1 <= top < n:
        raise ValueError(f"lora_layers: {top} of a model with {n} layers; use 1 to {n - 1} (or 0 for every layer)")
    return list(range(n - top, n))


def lora_placement(model, target_modules: list[str], top: int = 0) -> dict:
    """LoraConfig's `target_modules` and `layers_to_transform` for LoRA on `target_modules` of
    the top `top` transformer layers (0: every layer). peft takes a layer range only with a list
    of module names, so "all-linear" becomes the names of the linear layers inside the
    transformer layers (the output head and a pooler sit outside them and stay untouched, as
    with peft's own "all-linear")."""
    layers = lora_layers(model.config, top)
    targets = lora_targets(target_modules)
    if layers is None:
        return dict(target_modules=targets)
    _, attr, blocks = layer_list(model)
    if targets == "all-linear":  # (a model already wrapped by peft, adding a second adapter: skip its LoRA matrices)
        targets = sorted({name.removesuffix(".base_layer").rsplit(".", 1)[-1] for name, m in blocks.named_modules()
                          if isinstance(m, torch.nn.Linear) and "lora_" not in name})
    # the layer list's own name tells peft where the index is (a bare decoder's "layers.3.mlp"
    # has no prefix for peft's default guess)
    return dict(target_modules=targets, layers_to_transform=layers, layers_pattern=attr)


def add_lora(model, *, r: int, alpha: int, dropout: float, target_modules: list[str], layers: int = 0):
    """layers: LoRA only on the top `layers` transformer layers (0: every layer)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                        **lora_placement(model, target_modules, layers))
    return get_peft_model(model, config)


def trainable_policy(cfg, model=None):
    """The policy a trainer trains: `model`, or `cfg.model` loaded, with gradient checkpointing and
    a LoRA adapter as `cfg` asks (settings gradient_checkpointing, lora, lora_*)."""
    model = model if model is not None else load_policy(cfg.model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora:
        model = add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                         target_modules=cfg.lora_target_modules, layers=cfg.lora_layers)
    return model


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def reference_context(model):
    """Context under which `model` computes the reference policy: LoRA adapter disabled."""
    if is_peft(model):
        return model.disable_adapter()
    import contextlib

    return contextlib.nullcontext()


def is_fsdp(model: torch.nn.Module) -> bool:
    """Whether FSDP2 (`fully_shard`) manages some module of `model`."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def gathered_state_dict(model: torch.nn.Module) -> dict:
    """The weights and persistent buffers of an FSDP model whose modules were unsharded, by name."""
    out = dict(model.named_parameters())
    for prefix, module in model.named_modules():
        for name, buf in module._buffers.items():
            if buf is not None and name not in module._non_persistent_buffers_set:
                out[f"{prefix}.{name}" if prefix else name] = buf
    return out


def save_final(model, tokenizer, directory: Path, *, merge_lora: bool = False) -> Path:
    """`save_pretrained` layout: a PEFT adapter folder, or a full model (merged if asked)."""
    directory.mkdir(parents=True, exist_ok=True)
    if is_peft(model) and merge_lora:
        model = model.merge_and_unload()
    # an FSDP-trained model, gathered whole on every process (alignlab.train.distributed.unshard):
    # its state_dict() would take every process, so it is read from the modules directly
    state = {"state_dict": gathered_state_dict(model)} if is_fsdp(model) else {}
    if is_peft(model):
        # alignlab's adapters never target or resize the embeddings; saying so keeps peft from
        # looking the base model's name up on the hub to find out (no network at run time)
        model.save_pretrained(directory, save_embedding_layers=False, **state)
    else:
        model.save_pretrained(directory, **state)
    tokenizer.save_pretrained(directory)
    adapter_config = directory / "adapter_config.json"
    if adapter_config.is_file():  # a model given in memory: still no machine-local cache path as its base
        saved = json.loads(adapter_config.read_text())
        saved["base_model_name_or_path"] = portable_name(saved.get("base_model_name_or_path") or "")
        adapter_config.write_text(json.dumps(saved, indent=2, sort_keys=True))
    return directory
