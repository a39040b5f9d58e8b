"""Packed (prefix-shared) and padded layouts give the same log-probs and gradients as scoring
each sequence on its own; only response tokens are scored."""

from types import SimpleNamespace

import pytest
import torch

from alignlab.models.logprobs import SequenceScorer, sequence_logps, token_logps_from_hidden
from alignlab.models.packing import pack_pairs, pack_sequences, pad_pairs
from helpers import make_tiny_lm


def _pairs(seed=1, shapes=((5, 3, 7), (2, 9, 1), (8, 4, 4), (3, 2, 6), (1, 5, 5))):
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(3, 100, (n,), generator=g).tolist()

    return [SimpleNamespace(prompt_ids=ids(p), chosen_ids=ids(c), rejected_ids=ids(r)) for p, c, r in shapes]


def _brute_force(model, pairs):
    out = []
    for field in ("chosen_ids", "rejected_ids"):
        for p in pairs:
            response = getattr(p, field)
            ids = torch.tensor([p.prompt_ids + response])
            logp = model(ids).logits.log_softmax(-1)[0]
            P = len(p.prompt_ids)
            out.append(sum(logp[P - 1 + j, response[j]] for j in range(len(response))))
    return torch.stack(out)


@pytest.mark.parametrize("layout", ["shared", "unshared", "padded"])
def test_layouts_match_brute_force_values_and_gradients(layout):
    model = make_tiny_lm(100)
    pairs = _pairs()
    if layout == "padded":
        batch = pad_pairs(pairs, pad_token_id=0)
    else:
        batch = pack_pairs(pairs, pad_token_id=0, share_prompt=layout == "shared")
    got = sequence_logps(model, batch)
    want = _brute_force(model, pairs)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    weights = torch.linspace(0.5, 1.5, len(want))
    (g_got,) = torch.autograd.grad((got * weights).sum(), model.model.layers[0].self_attn.q_proj.weight)
    (g_want,) = torch.autograd.grad((want * weights).sum(), model.model.layers[0].self_attn.q_proj.weight)
    torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-4)


def test_packing_shares_prompt_and_wastes_little():
    pairs = _pairs()
    shared = pack_pairs(pairs, pad_token_id=0)
    padded = pad_pairs(pairs, pad_token_id=0)
    shared_real = sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    padded_real = shared_real + sum(len(p.prompt_ids) for p in pairs)  # the prompt twice
    assert shared_real < padded_real and shared.input_ids.numel() < padded.input_ids.numel()
    assert (shared.attention_mask[:, 0].diagonal(dim1=-2, dim2=-1) == 0).all()  # every token sees itself
    # first-fit-decreasing packs short blocks together: fewer padding slots than the padded layout
    assert shared.input_ids.numel() - shared_real < padded.input_ids.numel() - padded_real


def test_short_blocks_share_a_row():
    pairs = _pairs(shapes=((10, 10, 10), (3, 2, 2), (4, 3, 3), (2, 2, 2)))
    batch = pack_pairs(pairs, pad_token_id=0)
    assert batch.input_ids.shape == (2, 30)  # [30] and [7 + 10 + 6 = 23] by first-fit-decreasing


def test_only_response_tokens_are_scored():
    pairs = _pairs()
    batch = pack_pairs(pairs, pad_token_id=0)
    B = len(pairs)
    assert batch.lengths.tolist() == [len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs]
    flat = batch.input_ids.reshape(-1)
    # each scored position predicts the token right after it in its own sequence: the target
    # equals the response token, and the scored position is never a padding slot
    for seq in range(2 * B):
        targets = batch.score_targets[batch.score_sequence == seq].tolist()
        p = pairs[seq % B]
        assert targets == (p.chosen_ids if seq < B else p.rejected_ids)
    assert (flat[batch.score_positions] != -1).all()
    position = batch.position_ids.reshape(-1)[batch.score_positions]
    prompt_len = torch.tensor([len(pairs[s % B].prompt_ids) for s in batch.score_sequence.tolist()])
    assert (position >= prompt_len - 1).all()  # never a position inside the prompt except its last


def test_rejected_does_not_see_chosen():
    pairs = _pairs(shapes=((4, 3, 3),))
    model = make_tiny_lm(100)
    base = sequence_logps(model, pack_pairs(pairs, pad_token_id=0))
    pairs[0].chosen_ids = [7, 8, 9]
    changed = sequence_logps(model, pack_pairs(pairs, pad_token_id=0))
    assert base[1] == changed[1] and base[0] != changed[0]


def test_chunked_head_equals_full_log_softmax():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(13, 8)
    targets = torch.randint(0, 50, (13,))
    want = head(hidden).log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(token_logps_from_hidden(hidden, head, targets, chunk_size=4), want)


def test_blocks_with_k_responses_for_listwise_data():
    model = make_tiny_lm(100)
    prompt, responses = [5, 6, 7], [[8, 9], [10, 11, 12], [13]]
    batch = pack_sequences([(prompt, [(r, k) for k, r in enumerate(responses)])], 3, pad_token_id=0)
    got = SequenceScorer(model)(batch)
    for k, r in enumerate(responses):
        logp = model(torch.tensor([prompt + r])).logits.log_softmax(-1)[0]
        want = sum(logp[len(prompt) - 1 + j, r[j]] for j in range(len(r)))
        torch.testing.assert_close(got[k], want, atol=2e-5, rtol=1e-5)
