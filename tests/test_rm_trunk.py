"""LoRA reward ensembles on the top layers only: the bottom layers run once for every member
(SharedTrunk), and that changes neither the rewards nor their gradients."""

import pytest
import torch
from torch import nn

from alignlab.models.load import add_lora, lora_placement
from alignlab.models.reward import RewardModel, pack_reward_sequences, pad_encoder_sequences
from alignlab.models.trunk import SharedTrunk
from helpers import make_tiny_lm

SEQS = [([5, 6, 7], [8, 9, 2]), ([10, 11], [12, 2]), ([13, 14, 15, 16, 17], [18, 19, 20, 21, 2])]


def tiny_backbone(kind, layers=4):
    if kind == "causal":
        return make_tiny_lm(64, layers=layers).get_decoder()
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=128), add_pooling_layer=False)


def lora_rm(kind, top, members=3):
    from peft import LoraConfig, get_peft_model

    backbone = tiny_backbone(kind)
    names = tuple(f"member{k}" for k in range(members))
    torch.manual_seed(1)
    backbone = get_peft_model(backbone, LoraConfig(r=4, lora_alpha=8, **lora_placement(backbone, ["all-linear"], top)),
                              adapter_name=names[0])
    for extra in names[1:]:
        backbone.add_adapter(extra, LoraConfig(r=4, lora_alpha=8, **lora_placement(backbone, ["all-linear"], top)))
    with torch.no_grad():  # LoRA B starts at 0: make every adapter change its layers
        for n, p in backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return RewardModel(backbone, kind=kind, hidden_size=32, members=members, adapter_names=names)


def batch_for(kind):
    if kind == "causal":
        return pack_reward_sequences([(p, [(r, i)]) for i, (p, r) in enumerate(SEQS)], len(SEQS), pad_token_id=0)
    return pad_encoder_sequences(SEQS, pad_token_id=0)


def layer0_calls(rm):
    from alignlab.models.trunk import layer_list

    calls = []
    layer_list(rm.backbone)[2][0].register_forward_hook(lambda *a: calls.append(1))
    return calls


@pytest.mark.parametrize("kind", ["causal", "encoder"])
def test_top_layer_members_score_as_full_passes_running_the_bottom_layers_once(kind):
    rm = lora_rm(kind, top=2).eval()  # (no dropout: two passes compare exactly)
    assert rm.trunk is not None and rm.trunk.start == 2
    adapted = {n.split(".lora_")[0] for n, _ in rm.backbone.named_parameters() if "lora_A" in n}
    assert adapted and all(".2." in n or ".3." in n for n in adapted)  # only layers 2 and 3 carry adapters
    calls = layer0_calls(rm)
    batch = batch_for(kind)
    shared, _ = rm(batch)
    assert len(calls) == 1  # the bottom layers ran once for the 3 members
    trunk, rm.trunk = rm.trunk, None
    plain, _ = rm(batch)  # every member a whole pass of its own
    assert len(calls) == 1 + 3
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(plain[:, 0], plain[:, 1])  # members differ: the check is not vacuous
    rm.trunk = trunk
    rm(batch)
    assert len(calls) == 4  # the same batch again: its trunk output is kept
    trunk.clear()
    # member-by-member calls on one batch (the training loop's split backward) share the trunk too
    per_member = [rm(batch, member=k)[0] for k in range(3)]
    assert len(calls) == 1 + 3 + 1
    torch.testing.assert_close(torch.cat(per_member, 1), plain, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["causal", "encoder"])
def test_the_shared_trunk_gives_the_gradient_of_the_full_passes(kind):
    rm = lora_rm(kind, top=2).eval()  # gradients flow in eval mode too; no dropout to differ
    batch = batch_for(kind)
    params = [p for p in rm.parameters() if p.requires_grad]

    def grads():
        rm.trunk.clear() if rm.trunk is not None else None
        for p in params:
            p.grad = None
        rewards, _ = rm(batch)
        (rewards * torch.arange(1.0, 1 + rewards.numel()).view_as(rewards)).sum().backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]

    shared = grads()
    rm.trunk = None
    plain = grads()
    for a, b in zip(shared, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    names = [n for n, p in rm.named_parameters() if p.requires_grad]
    assert all(g.abs().sum() > 0 for n, g in zip(names, plain) if "lora_" in n)


def test_members_on_every_layer_have_no_trunk():
    assert lora_rm("causal", top=0).trunk is None


class Reversed(nn.Module):
    """A model that runs its layers top-down: the trunk split cannot reproduce it."""

    def __init__(self):
        super().__init__()
        self.config = type("C", (), {"num_hidden_layers": 2})()
        self.embed = nn.Embedding(10, 4)
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    def forward(self, ids):
        h = self.embed(ids)
        for layer in reversed(self.layers):
            h = torch.tanh(layer(h))
        return h


def test_an_architecture_the_split_does_not_fit_fails_with_a_clear_error():
    model = Reversed()
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="lora_layers: 0"):
        SharedTrunk(model, 1).check(lambda: model(ids), lambda h: h)
    with pytest.raises(ValueError, match="between 1 and 1"):
        SharedTrunk(model, 2)


def test_lora_layers_is_checked_against_the_model():
    from alignlab.config import ConfigError
    from alignlab.train.reward import RMConfig

    with pytest.raises(ValueError, match="lora_layers: 4 of a model with 4 layers; use 1 to 3"):
        lora_placement(tiny_backbone("causal"), ["all-linear"], 4)
    with pytest.raises(ConfigError, match="lora_layers must be >= 0"):
        RMConfig(lora_layers=-1).validate()


def test_policy_lora_on_the_top_layers_adapts_only_them():
    model = add_lora(make_tiny_lm(64, layers=3), r=4, alpha=8, dropout=0.0, target_modules=["all-linear"], layers=1)
    adapted = {n.split(".lora_")[0] for n, _ in model.named_parameters() if "lora_A" in n}
    assert len(adapted) == 7 and all(".layers.2." in n for n in adapted)  # q k v o gate up down of the top layer
    assert not any("lm_head" in n for n in adapted)
    named = add_lora(make_tiny_lm(64, layers=3), r=4, alpha=8, dropout=0.0, target_modules=["q_proj"], layers=2)
    assert sorted(n.split(".lora_")[0] for n, _ in named.named_parameters() if "lora_A" in n) == [
        "base_model.model.model.layers.1.self_attn.q_proj", "base_model.model.model.layers.2.self_attn.q_proj"]
