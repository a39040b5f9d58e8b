"""Reward models: where the reward is read, packing vs one-at-a-time, export to transformers."""

import pytest
import torch

from alignlab.models.reward import RewardModel, pack_reward_sequences, pad_encoder_sequences
from helpers import make_tiny_lm


def tiny_bert(seed=0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=128), add_pooling_layer=False)


def causal_rm(members=1, attributes=("reward",), gating=False):
    lm = make_tiny_lm(64)
    return RewardModel(lm.get_decoder(), kind="causal", hidden_size=32, members=members, attributes=attributes,
                       gating=gating).eval()


SEQS = [([5, 6, 7], [8, 9, 2]), ([10, 11], [12, 2]), ([13, 14, 15, 16, 17], [18, 19, 20, 21, 2])]


def test_packed_causal_reward_equals_each_sequence_alone_at_its_last_token():
    rm = causal_rm(members=3)
    blocks = [(p, [(r, i)]) for i, (p, r) in enumerate(SEQS)]
    rewards, _ = rm(pack_reward_sequences(blocks, len(SEQS), pad_token_id=0))
    for i, (p, r) in enumerate(SEQS):
        ids = torch.tensor([p + r])
        hidden = rm.backbone(input_ids=ids).last_hidden_state[0, -1]  # the last response token
        expected = torch.einsum("h,kha->ka", hidden, rm.head_weight)[:, 0]
        torch.testing.assert_close(rewards[i], expected, atol=1e-5, rtol=1e-4)


def test_pairs_sharing_a_prompt_match_separate_blocks():
    rm = causal_rm()
    shared = pack_reward_sequences([([5, 6, 7], [([8, 9, 2], 0), ([30, 2], 1)])], 2, pad_token_id=0)
    apart = pack_reward_sequences([([5, 6, 7], [([8, 9, 2], 0)]), ([5, 6, 7], [([30, 2], 1)])], 2, pad_token_id=0)
    torch.testing.assert_close(rm(shared)[0], rm(apart)[0], atol=1e-5, rtol=1e-4)


def test_encoder_rows_are_mean_pooled_over_real_tokens_only():
    rm = RewardModel(tiny_bert(), kind="encoder", hidden_size=32).eval()
    batch = pad_encoder_sequences([(p, r) for p, r in SEQS], pad_token_id=0)
    rewards, _ = rm(batch)
    for i, seq in enumerate(SEQS):
        alone, _ = rm(pad_encoder_sequences([seq], pad_token_id=0))
        torch.testing.assert_close(rewards[i], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_causal_export_loads_as_sequence_classifier_with_the_same_reward(tmp_path, smol_tokenizer, padding_side):
    from transformers import AutoModelForSequenceClassification

    from alignlab.models.reward_io import load_reward_model, save_reward_model

    lm = make_tiny_lm(len(smol_tokenizer))
    rm = RewardModel(lm.get_decoder(), kind="causal", hidden_size=32).eval()
    save_reward_model(rm, smol_tokenizer, tmp_path / "rm")
    clf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    eos = smol_tokenizer.eos_token_id  # responses END with eos, which SmolLM2 also uses as pad
    seqs = [([5, 6, 7], [8, 9, eos]), ([10, 11], [12, eos]), ([13, 14, 15, 16], [18, 19, 20, 21, eos])]
    ours, _ = rm(pack_reward_sequences([(p, [(r, i)]) for i, (p, r) in enumerate(seqs)], 3, pad_token_id=eos))
    pad = clf.config.pad_token_id
    assert pad != eos
    L = max(len(p) + len(r) for p, r in seqs)
    rows, masks = [], []
    for p, r in seqs:
        ids, n = p + r, L - len(p) - len(r)
        rows.append([pad] * n + ids if padding_side == "left" else ids + [pad] * n)
        masks.append([0] * n + [1] * len(ids) if padding_side == "left" else [1] * len(ids) + [0] * n)
    theirs = clf(input_ids=torch.tensor(rows), attention_mask=torch.tensor(masks)).logits[:, 0]
    torch.testing.assert_close(ours[:, 0], theirs, atol=1e-4, rtol=1e-4)
    loaded, _, meta = load_reward_model(tmp_path / "rm")
    assert meta["kind"] == "causal"
    torch.testing.assert_close(loaded(pack_reward_sequences([(p, [(r, i)]) for i, (p, r) in enumerate(seqs)], 3,
                                                            pad_token_id=eos))[0], ours, atol=1e-5, rtol=1e-4)


def test_gate_reduces_to_the_single_head_with_one_attribute_and_direction_replaces_it():
    one = causal_rm(attributes=("reward",), gating=True)
    assert one.gate is None  # a gate over one attribute would always weigh it 1
    batch = pack_reward_sequences([(p, [(r, i)]) for i, (p, r) in enumerate(SEQS)], 3, pad_token_id=0)
    rewards, attrs = one(batch)
    torch.testing.assert_close(rewards, attrs[..., 0])
    multi = causal_rm(attributes=("help", "safe"), gating=True)
    rewards, attrs = multi(batch)
    assert rewards.shape == (3, 1) and attrs.shape == (3, 1, 2)
    lo, hi = attrs.min(-1).values, attrs.max(-1).values
    assert ((rewards >= lo - 1e-6) & (rewards <= hi + 1e-6)).all()  # a convex mix of the heads
    multi.set_direction([3.0, 4.0])
    rewards, attrs = multi(batch)
    torch.testing.assert_close(rewards, attrs @ torch.tensor([0.6, 0.8]))
    with pytest.raises(ValueError, match="direction"):
        multi.set_direction([0.0, 0.0])


def test_an_untrained_gate_is_never_used_to_score_and_the_saved_model_says_so(tmp_path, smol_tokenizer):
    import json

    from alignlab.models.reward_io import load_reward_model, save_reward_model

    lm = make_tiny_lm(len(smol_tokenizer))
    rm = RewardModel(lm.get_decoder(), kind="causal", hidden_size=32, attributes=("help", "safe"), gating=True).eval()
    with torch.no_grad():  # a gate far from uniform: if it were read, the scores would not be the mean
        rm.gate.weight.normal_(0, 3.0)
    batch = pack_reward_sequences([(p, [(r, i)]) for i, (p, r) in enumerate(SEQS)], 3, pad_token_id=0)
    rewards, attrs = rm(batch)
    torch.testing.assert_close(rewards, attrs.mean(-1))  # the documented fixed weighting: uniform mean
    save_reward_model(rm, smol_tokenizer, tmp_path / "rm", objective="ratings")
    meta = json.loads((tmp_path / "rm" / "alignlab_reward.json").read_text())
    assert meta["gating"] is True and meta["gate_trained"] is False
    loaded, _, _ = load_reward_model(tmp_path / "rm")
    got, got_attrs = loaded(batch)
    torch.testing.assert_close(got, got_attrs.mean(-1), atol=1e-5, rtol=1e-5)
    # once trained, the gate mixes the attributes per prompt: no longer the mean
    rm.gate_trained = True
    gated, _ = rm(batch)
    assert (gated - attrs.mean(-1)).abs().max() > 1e-3
    save_reward_model(rm, smol_tokenizer, tmp_path / "gated", objective="gate")
    loaded, _, meta = load_reward_model(tmp_path / "gated")
    assert meta["gate_trained"] is True
    torch.testing.assert_close(loaded(batch)[0], gated, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_plain_transformers_on_chat_template_text_scores_as_alignlab_does(tmp_path, smol_tokenizer, padding_side):
    """Issue 24 item 15: apply_chat_template(conversation) ends in `<|im_end|>\\n`; transformers
    reads the last non-pad token, alignlab the end-of-turn token. The export makes them the same."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignlab.models.reward_io import save_reward_model
    from alignlab.rewards.model import RewardModelSource

    lm = make_tiny_lm(len(smol_tokenizer), seed=3)
    save_reward_model(RewardModel(lm.get_decoder(), kind="causal", hidden_size=32).eval(), smol_tokenizer,
                      tmp_path / "rm")
    prompts = ["Tell me about tea.", "Name a colour."]
    responses = ["Tea is a warm drink.\n", "Blue, like a clear sky on a long summer day."]
    tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    tok.padding_side = padding_side
    texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False)
             for p, r in zip(prompts, responses)]
    assert all(t.endswith("<|im_end|>\n") for t in texts)
    clf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    with torch.no_grad():
        theirs = clf(**tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)).logits[:, 0]
    ours = RewardModelSource(tmp_path / "rm", device="cpu").score(prompts, responses)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
