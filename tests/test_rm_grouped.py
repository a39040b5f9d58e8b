"""Reward-model micro-batches encode each distinct (prompt, response) once, and `group_by_prompt`
batches whole prompts with all their pairs (InstructGPT's batching): the same per-pair losses as
pair-by-pair batches, far fewer sequences, and a model that still learns."""

import itertools

import pytest
import torch

from alignlab.config import ConfigError
from alignlab.data.records import PairwiseRecord
from alignlab.train.reward import RewardAlgorithm, RMConfig, make_batch, prompt_groups, train_reward_model

TOPICS = ["cats", "rain", "tea", "maps", "trains", "bread", "snow", "music", "paint", "boats"]
TONES = ["I love {t}, wonderful and great.", "I like {t}, nice.", "{t} are fine, I suppose.",
         "I dislike {t}, rather bad.", "I hate {t}, awful and terrible."]  # best first


def all_pairs(topics, tones=TONES):
    """Every pair of each topic's responses, the better one chosen: len(tones) choose 2 per prompt."""
    return [PairwiseRecord(prompt=f"Tell me about {t}.", chosen=a.format(t=t), rejected=b.format(t=t))
            for t in topics for a, b in itertools.combinations(tones, 2)]


def items_and_algorithm(tmp_path, model_dir, records, **kw):
    from alignlab.train.reward_data import prepare_reward_session

    cfg = RMConfig(model=str(model_dir), output_dir=str(tmp_path / "rm"), progress=False, max_length=64, **kw)
    session, items = prepare_reward_session(cfg, train_records=records)
    session.model.eval()  # no dropout: one sequence's reward is the same in any batch
    return items["train"], RewardAlgorithm(cfg, session.model, items["train"], [], session.pad_token_id)


@pytest.mark.parametrize("which", ["encoder", "causal"])
def test_a_response_shared_by_pairs_is_encoded_once_and_every_pair_reads_its_own_rewards(
        tmp_path, which, tiny_encoder_dir, tiny_policy_dir):
    model_dir = tiny_encoder_dir if which == "encoder" else tiny_policy_dir
    items, algo = items_and_algorithm(tmp_path, model_dir, all_pairs(TOPICS[:2]), batch_size=4)
    assert len(items) == 20  # 2 prompts x 10 pairs of 5 responses
    batch = make_batch(items, list(range(20)), algo.model.kind, algo.pad_token_id)
    assert batch.rewards_input.num_sequences == 10  # 2 x 5 distinct responses, not 40
    with torch.no_grad():
        together, _, _ = algo._member_losses(algo.model, batch)
        alone = torch.cat([algo._member_losses(algo.model, make_batch(items, [i], algo.model.kind,
                                                                      algo.pad_token_id))[0] for i in range(20)])
    assert torch.allclose(together, alone, atol=1e-5)  # the same per-pair Bradley-Terry losses
    assert together.std() > 1e-4  # and they differ by pair: a wrong index could not pass by luck


def test_group_by_prompt_batches_whole_prompts_each_pair_once_per_epoch(tmp_path, tiny_encoder_dir):
    items, algo = items_and_algorithm(tmp_path, tiny_encoder_dir, all_pairs(TOPICS[:5]), batch_size=2,
                                      group_by_prompt=True)
    for epoch in (0, 1):
        batches = algo.micro_batches(epoch)
        assert len(batches) == 3  # 5 prompts, 2 per micro-batch
        seen = sorted(i for b in batches for i in b.indices.tolist())
        assert seen == list(range(len(items)))
        for b in batches:
            groups = prompt_groups(items, b.indices.tolist())
            assert all(len(g) == 10 for g in groups)  # every pair of each prompt in the batch
            assert b.rewards_input.num_sequences == 5 * len(groups)
    first_prompts = [prompt_groups(items, b.indices.tolist())[0][0] for b in algo.micro_batches(0)]
    assert first_prompts != [prompt_groups(items, b.indices.tolist())[0][0] for b in algo.micro_batches(1)]  # reshuffled

    _, plain = items_and_algorithm(tmp_path / "plain", tiny_encoder_dir, all_pairs(TOPICS[:5]), batch_size=2)
    assert len(plain.micro_batches(0)) == 25  # batch_size counts pairs without grouping


@pytest.mark.parametrize("which", ["encoder", "causal"])
def test_grouped_training_learns_held_out_orderings(tmp_path, which, tiny_encoder_dir, tiny_policy_dir):
    model_dir = tiny_encoder_dir if which == "encoder" else tiny_policy_dir
    cfg = RMConfig(model=str(model_dir), output_dir=str(tmp_path / "rm"), batch_size=2, epochs=12.0,
                   learning_rate=3e-3, warmup_ratio=0.0, progress=False, max_length=64, group_by_prompt=True)
    session = train_reward_model(cfg, train_records=all_pairs(TOPICS[:8]), eval_records=all_pairs(TOPICS[8:]))
    evals = [r for r in session.state.history if "eval/accuracy" in r]
    assert session.state.step == 48  # 4 micro-batches of 2 prompts x 12 epochs
    assert evals[-1]["eval/accuracy"] >= 0.9  # of 20 held-out pairs, including the close ones
    losses = [r["loss"] for r in session.state.history if "loss" in r]
    assert sum(losses[-4:]) / 4 < losses[0] - 0.2


def test_grouped_cost_batches_read_each_pairs_own_safety_flags(tmp_path, tiny_encoder_dir):
    """The cost objective (Safe RLHF) on whole-prompt micro-batches: a response shared by several
    pairs is encoded once, yet each pair keeps its own chosen/rejected unsafe flags and loss."""
    records = []
    for t in TOPICS[:2]:
        for (a, i), (b, j) in itertools.combinations(list(zip(TONES, range(5))), 2):
            records.append(PairwiseRecord(prompt=f"Tell me about {t}.", chosen=a.format(t=t), rejected=b.format(t=t),
                                          meta={"chosen_safe": i < 2, "rejected_safe": j < 2}))
    items, algo = items_and_algorithm(tmp_path, tiny_encoder_dir, records, batch_size=1, objective="cost",
                                      group_by_prompt=True)
    batches = algo.micro_batches(0)
    assert len(batches) == 2 and all(b.rewards_input.num_sequences == 5 for b in batches)  # 10 pairs, 5 responses
    for b in batches:
        expected = torch.tensor([[0.0 if records[i].meta[k] else 1.0 for k in ("chosen_safe", "rejected_safe")]
                                 for i in b.indices.tolist()])
        assert torch.equal(b.targets, expected)  # the flags travel with their pair, not their sequence
        with torch.no_grad():
            together, _, _ = algo._member_losses(algo.model, b)
            alone = torch.cat([algo._member_losses(algo.model, make_batch(items, [i], "encoder", algo.pad_token_id))[0]
                               for i in b.indices.tolist()])
        assert torch.allclose(together, alone, atol=1e-5) and together.std() > 1e-4


def test_rating_items_that_repeat_a_response_are_encoded_once_with_their_own_targets(tmp_path, tiny_encoder_dir):
    """Two raters scoring the same (prompt, response): one sequence in the batch, two regression
    targets, the same per-item losses as one item at a time."""
    from alignlab.data.records import RatingRecord

    texts = ["I love tea.", "I hate tea."]
    records = [RatingRecord(prompt="Tell me about tea.", responses=texts, ratings=[{"q": 4.0}, {"q": 1.0}]),
               RatingRecord(prompt="Tell me about tea.", responses=texts, ratings=[{"q": 3.0}, {"q": 2.0}])]
    items, algo = items_and_algorithm(tmp_path, tiny_encoder_dir, records, objective="ratings")
    assert len(items) == 4
    batch = make_batch(items, [0, 1, 2, 3], "encoder", algo.pad_token_id)
    assert batch.rewards_input.num_sequences == 2
    assert batch.sequence_index[:, 0].tolist() == [0, 1, 0, 1]
    with torch.no_grad():
        together, _, _ = algo._member_losses(algo.model, batch)
        alone = torch.cat([algo._member_losses(algo.model, make_batch(items, [i], "encoder", algo.pad_token_id))[0]
                           for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(together[0], together[2])  # same sequence, different targets


def test_group_by_prompt_needs_pairs(tmp_path):
    with pytest.raises(ConfigError, match="group_by_prompt"):
        RMConfig(train_data="x.jsonl", objective="ratings", group_by_prompt=True).validate()


@pytest.mark.parametrize("which", ["encoder", "causal"])
def test_scoring_computes_a_repeated_sequence_once_and_returns_it_at_every_place(which, tiny_encoder_dir,
                                                                                  tiny_policy_dir):
    from transformers import AutoTokenizer

    from alignlab.data import encode_prompt_response
    from alignlab.models.reward import score_sequences
    from alignlab.models.reward_io import build_reward_model, reward_pad_token_id

    path = tiny_encoder_dir if which == "encoder" else tiny_policy_dir
    model, tokenizer = build_reward_model(str(path)).eval(), AutoTokenizer.from_pretrained(path)
    distinct = [encode_prompt_response(tokenizer, "Tell me about tea.", t.format(t="tea")) for t in TONES]
    repeated = [distinct[i] for i in (3, 0, 3, 4, 0, 1, 2, 3)]
    seen = []
    forward = model.forward
    model.forward = lambda batch, **kw: (seen.append(batch.num_sequences), forward(batch, **kw))[1]
    pad = reward_pad_token_id(tokenizer)
    with torch.no_grad():
        alone, _ = score_sequences(model, distinct, pad_token_id=pad)
        seen.clear()
        again, attrs = score_sequences(model, repeated, pad_token_id=pad, batch_size=2)
    assert sum(seen) == 5  # 8 sequences asked for, 5 distinct ones computed
    assert torch.allclose(again, alone[[3, 0, 3, 4, 0, 1, 2, 3]], atol=1e-6)
    assert attrs.shape == (8, 1, 1) and alone[:, 0].std() > 1e-5


def test_train_rm_dry_run_says_the_batch_counts_prompts(tmp_path, tiny_encoder_dir, capsys):
    import json

    from alignlab.cli import main

    data = tmp_path / "ranked.jsonl"
    data.write_text("".join(json.dumps({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}) + "\n"
                            for r in all_pairs(TOPICS[:3])))
    args = ["train", "rm", "--model", str(tiny_encoder_dir), "--train-data", str(data), "--output-dir",
            str(tmp_path / "rm"), "--dry-run", "--batch-size", "2"]
    assert main(args + ["--group-by-prompt"]) == 0
    out = capsys.readouterr().out
    assert "2 per device x 1 accumulation x 1 process(es) = 2 prompts (each with all its pairs) per optimizer step" in out
    assert "3 train prompts (each with all its pairs) -> 2 micro-batches" in out
    assert main(args) == 0
    assert "30 train examples -> 15 micro-batches" in capsys.readouterr().out
