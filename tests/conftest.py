"""Shared fixtures: the real SmolLM2 tokenizer (cached once) and tiny random causal LMs built
from a config, so unit tests take seconds."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import make_tiny_lm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smol_tokenizer():
    from alignlab.models.embedded import embedded_tokenizer

    return embedded_tokenizer()


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
