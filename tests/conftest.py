"""Shared fixtures: the real SmolLM2 tokenizer (cached once) and tiny random causal LMs built
from a config, so unit tests take seconds."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smol_tokenizer():
    from alignlab.models.embedded import embedded_tokenizer

    return embedded_tokenizer()


def make_tiny_lm(vocab_size: int, seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, pad_token_id=2, bos_token_id=1, eos_token_id=2,
    )
    model = LlamaForCausalLM(config)
    model.config._attn_implementation = "sdpa"
    return model


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory, smol_tokenizer):
    """A save_pretrained folder: tiny random Llama with SmolLM2's tokenizer and chat template."""
    path = tmp_path_factory.mktemp("tiny-policy")
    make_tiny_lm(len(smol_tokenizer)).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A tiny random BERT (2 layers, width 32) with MiniLM's tokenizer: the encoder reward-model kind."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from alignlab.models.embedded import encoder_dir

    path = tmp_path_factory.mktemp("tiny-encoder")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128), add_pooling_layer=False).save_pretrained(path)
    AutoTokenizer.from_pretrained(encoder_dir()).save_pretrained(path)
    return path


BENCH_DIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "bench"


def run_bench(script: str, out, *args) -> dict:
    """Run bench/<script> in a subprocess; check it succeeded, printed exactly one JSON line on
    stdout (everything else on stderr) and wrote the same JSON to `out`; return it."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(BENCH_DIR / script), "--out", str(out), *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    report = json.loads(lines[0])
    assert json.loads(out.read_text()) == report
    return report
