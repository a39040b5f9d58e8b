"""SentimentTask: the prompts, the seeded split, and the VADER gold reward."""

import pytest
import torch

from alignlab.lab.sentiment import TOPICS, SentimentTask, vader_compound


def test_prompts_are_one_user_turn_per_unique_topic():
    task = SentimentTask()
    assert len(task) == len(task.prompts) == len(TOPICS) >= 240
    assert len(set(TOPICS)) == len(TOPICS)
    ocean = [{"role": "user", "content": "Write one sentence about the ocean."}]
    assert task.prompts[TOPICS.index("the ocean")] == ocean
    assert all(len(p) == 1 and p[0]["role"] == "user" for p in task.prompts)


def test_topics_are_neutral_to_the_gold_reward():
    # the prompts themselves carry no sentiment, so the base policy starts near 0
    assert (vader_compound(list(TOPICS)) == 0).all()


def test_split_is_disjoint_sized_and_seeded():
    task = SentimentTask()
    train, held_out = task.split(160, 64, seed=0)
    assert len(train) == 160 and len(held_out) == 64
    contents = lambda ps: [p[0]["content"] for p in ps]  # noqa: E731
    assert not set(contents(train)) & set(contents(held_out))
    assert len(set(contents(train))) == 160
    assert task.split(160, 64, seed=0) == (train, held_out)
    assert SentimentTask().split(160, 64, seed=0) == (train, held_out)
    assert task.split(160, 64, seed=1)[0] != train
    assert contents(train) != contents(task.prompts[:160])  # shuffled, not the file order


def test_split_uses_everything_at_most_and_rejects_more():
    task = SentimentTask()
    train, held_out = task.split(len(task) - 10, 10)
    assert sorted(p[0]["content"] for p in train + held_out) == sorted(p[0]["content"] for p in task.prompts)
    with pytest.raises(ValueError, match="asked for"):
        task.split(len(task), 1)
    with pytest.raises(ValueError, match=">= 0"):
        task.split(-1, 5)


def test_duplicate_topics_are_refused():
    with pytest.raises(ValueError, match="unique"):
        SentimentTask(["a cat", "a dog", "a cat"])


def test_gold_reward_is_vader_compound_with_the_right_signs():
    task = SentimentTask()
    texts = ["The ocean is beautiful and I love the calm, wonderful waves.",
             "The train station was filthy, awful and depressing.",
             "The bus leaves at nine.", "", "   "]
    gold = task.gold_reward(texts)
    assert gold.shape == (5,) and gold.dtype == torch.float32
    assert gold[0] > 0.5 and gold[1] < -0.5
    assert gold[2] == 0 and gold[3] == 0 and gold[4] == 0
    assert ((gold >= -1) & (gold <= 1)).all()
    # VADER's own published behaviour: punctuation amplifies, negation flips
    assert task.gold_reward(["It is good!!!"])[0] > task.gold_reward(["It is good."])[0]
    assert task.gold_reward(["It is not good."])[0] < 0
    assert task.gold_reward([]).shape == (0,)


def test_gold_reward_refuses_a_bare_string():
    with pytest.raises(TypeError, match="list of texts"):
        SentimentTask().gold_reward("a single text")
