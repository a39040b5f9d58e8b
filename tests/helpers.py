"""Helpers the tests import by name (`from helpers import ...`): tiny random causal LMs and the
benchmark-script runner. Fixtures live in conftest.py; pytest loads several conftest modules, so
nothing is imported from them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch


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


BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def run_bench(script: str, out, *args) -> dict:
    """Run bench/<script> in a subprocess; check it succeeded, printed exactly one JSON line on
    stdout (everything else on stderr) and wrote the same JSON to `out`; return it."""
    proc = subprocess.run([sys.executable, str(BENCH_DIR / script), "--out", str(out), *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    report = json.loads(lines[0])
    assert json.loads(out.read_text()) == report
    return report
