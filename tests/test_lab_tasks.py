"""The lab's language tasks: arithmetic (verifiable answers), length/format control, the sentiment
wrapper, and the registry the trainers use."""

import re
from collections import Counter

import pytest
import torch

from alignlab.lab.arithmetic import TEMPLATES, ArithmeticTask
from alignlab.lab.length import LengthTask, length_reward
from alignlab.lab.sentiment import TOPICS, vader_compound
from alignlab.lab.tasks import LAB_TASKS, get_task
from alignlab.rewards.spec import build_reward_source
from alignlab.rewards.verifiable import answer_key

# Recomputed from the wording alone, independently of the task's own answer functions.
WORDINGS = [
    (re.compile(r"has (\d+) \w+ and buys (\d+) more\. "), lambda a, b: a + b),
    (re.compile(r"has (\d+) \w+ and gives (\d+) of them to a friend\. "), lambda a, b: a - b),
    (re.compile(r"buys (\d+) bags with (\d+) \w+ in each bag\. "), lambda a, b: a * b),
    (re.compile(r"has (\d+) \w+, buys (\d+) more and then gives (\d+) away\. "), lambda a, b, c: a + b - c),
]


def _content(row):
    return row["prompt"][0]["content"]


def _all_rows(task, split):
    return task.prompt_rows(split, len(task._splits[split]))


def test_arithmetic_answers_are_right():
    task = ArithmeticTask()
    rows = _all_rows(task, "train") + _all_rows(task, "eval")
    assert len(rows) == sum(sum(1 for _ in t.operands()) for t in TEMPLATES.values()) > 2000
    for row in rows:
        text = _content(row)
        assert row["prompt"][0]["role"] == "user" and text.endswith(" Answer with just the number.")
        matches = [(m, fn) for pattern, fn in WORDINGS if (m := pattern.search(text))]
        assert len(matches) == 1, text
        match, fn = matches[0]
        operands = [int(x) for x in match.groups()]
        assert row["answer"] == str(fn(*operands)), text
        assert eval(row["expression"]) == int(row["answer"])  # the stored expression agrees
        assert [int(x) for x in re.findall(r"\d+", row["expression"])] == operands
        assert max(operands) <= 20 and int(row["answer"]) >= 0


def test_arithmetic_splits_are_disjoint_sized_and_seeded():
    task = ArithmeticTask(seed=0)
    train, held_out = _all_rows(task, "train"), _all_rows(task, "eval")
    assert not {_content(r) for r in train} & {_content(r) for r in held_out}
    # not even the same sum with other names: a problem's split is set by its numbers
    assert not {r["expression"] for r in train} & {r["expression"] for r in held_out}
    assert 0.15 < len(held_out) / (len(train) + len(held_out)) < 0.25
    assert ArithmeticTask(seed=0).prompt_rows("train", 50) == train[:50]
    assert task.prompt_rows("eval", 10) == held_out[:10]
    other = ArithmeticTask(seed=1)
    assert {_content(r) for r in _all_rows(other, "eval")} != {_content(r) for r in held_out}
    # a problem's wording does not depend on the seed, only whether and when it is served
    assert {_content(r) for r in _all_rows(other, "eval") + _all_rows(other, "train")} == \
        {_content(r) for r in train + held_out}


def test_arithmetic_prefixes_mix_the_templates_evenly():
    rows = ArithmeticTask().prompt_rows("train", 40)
    kinds = Counter(next(i for i, (p, _) in enumerate(WORDINGS) if p.search(_content(r))) for r in rows)
    assert kinds == {0: 10, 1: 10, 2: 10, 3: 10}


def test_arithmetic_gold_reward_and_reward_source():
    task = ArithmeticTask()
    rows = task.prompt_rows("eval", 4)
    prompts = [r["prompt"] for r in rows]
    responses = [rows[0]["answer"], f"So the answer is {int(rows[1]['answer']) + 1}.",
                 f"\\boxed{{{rows[2]['answer']}}}", "I do not know."]
    assert task.gold_reward(prompts, responses).tolist() == [1.0, 0.0, 1.0, 0.0]
    answers = task.answers(rows)
    assert answers == {answer_key(r["prompt"]): r["answer"] for r in rows}
    source = build_reward_source("lab:arithmetic", answers=answers)
    assert source.name == "arithmetic"
    assert source.score(prompts, responses).tolist() == [1.0, 0.0, 1.0, 0.0]
    # prompts from elsewhere need their answers given; the given answer wins
    outside = [{"role": "user", "content": "What is 2 + 2?"}]
    with pytest.raises(ValueError, match="no reference answer for prompt 'user: What is 2"):
        task.reward_source({}).score([outside], ["4"])
    assert task.reward_source({answer_key(outside): "4"}).score([outside], ["4"]).tolist() == [1.0]


def test_rows_are_copies():
    task = ArithmeticTask()
    rows = task.prompt_rows("train", 2)
    rows[0]["prompt"][0]["content"] = "changed"
    rows[0]["answer"] = "0"
    again = task.prompt_rows("train", 2)
    assert _content(again[0]) != "changed" and again[0]["answer"] != "0"


@pytest.mark.parametrize("text, expected", [
    (" ".join(["word"] * 12), 1.0),
    (" ".join(["word"] * 6), 0.5),
    (" ".join(["word"] * 18), 0.5),
    (" ".join(["word"] * 9), 0.75),
    ("", 0.0),
    (" ".join(["word"] * 36), -1.0),
    (" ".join(["word"] * 50), -1.0),  # clipped at -1
    (" ".join(["word"] * 6) + "\n" + " ".join(["word"] * 6), 0.5),  # 12 words on two lines
    ("- " + " ".join(["word"] * 11), 0.5),  # a list marker ("-" counts as a word)
    ("1. " + " ".join(["word"] * 11), 0.5),
    ("It is well known - and true - that cats sleep a lot each day.", 1.0 - 3 / 12),  # 15 words, dashes mid-line
    ("\n  " + " ".join(["word"] * 12) + "\n", 1.0),  # surrounding whitespace is not a break
    (" ".join(["word"] * 50) + "\n- more", -1.5),
])
def test_length_reward_by_hand(text, expected):
    assert LengthTask().gold_reward([text]).tolist() == pytest.approx([expected])


def test_length_reward_other_target():
    assert length_reward(["a b c d e", "a b c d e f g h i j"], target_words=10).tolist() == pytest.approx([0.5, 1.0])
    with pytest.raises(ValueError, match="target_words"):
        LengthTask(target_words=0)
    with pytest.raises(TypeError, match="list of texts"):
        length_reward("a b c", 3)


def test_length_splits_and_reward_source():
    task = LengthTask(seed=0)
    train, held_out = _all_rows(task, "train"), _all_rows(task, "eval")
    assert len(train) + len(held_out) == len(TOPICS) and len(held_out) == round(0.2 * len(TOPICS))
    assert not {_content(r) for r in train} & {_content(r) for r in held_out}
    assert {_content(r) for r in train + held_out} == {f"Describe {t} in one sentence." for t in TOPICS}
    assert all(set(r) == {"prompt"} for r in train)
    assert LengthTask(seed=0).prompt_rows("eval", 5) == held_out[:5]
    assert LengthTask(seed=1).prompt_rows("eval", 5) != held_out[:5]
    assert task.answers(train) == {}
    source = build_reward_source("lab:length")
    texts = [" ".join(["word"] * 12), " ".join(["word"] * 6)]
    assert source.name == "length"
    assert source.score([r["prompt"] for r in train[:2]], texts).tolist() == pytest.approx([1.0, 0.5])


def test_sentiment_lab_task_wraps_the_sentiment_task():
    task = get_task("sentiment", seed=0)
    train, held_out = _all_rows(task, "train"), _all_rows(task, "eval")
    contents = lambda rows: {_content(r) for r in rows}  # noqa: E731
    assert len(train) + len(held_out) == len(TOPICS) and not contents(train) & contents(held_out)
    assert get_task("sentiment", seed=0).prompt_rows("train", 7) == train[:7]
    assert get_task("sentiment", seed=3).prompt_rows("train", 7) != train[:7]
    texts = ["What a wonderful, lovely day.", "This is awful and sad.", "The bus leaves at nine."]
    source = build_reward_source("lab:sentiment")
    assert source.name == "sentiment"
    assert torch.equal(source.score([r["prompt"] for r in train[:3]], texts), vader_compound(texts))
    assert task.answers(train) == {}


@pytest.mark.parametrize("name", ["sentiment", "arithmetic", "length"])
def test_registry_tasks_share_the_interface(name):
    task = get_task(name)
    assert task.name == name and name in LAB_TASKS
    assert task.needs_answers == (name == "arithmetic")
    rows = task.prompt_rows("train", 3)
    assert len(rows) == 3 and all(r["prompt"][0]["role"] == "user" for r in rows)
    with pytest.raises(ValueError, match="unknown split 'test'; use one of train, eval"):
        task.prompt_rows("test", 3)
    with pytest.raises(ValueError, match="asked for 100000 eval prompts, the split has"):
        task.prompt_rows("eval", 100000)
    with pytest.raises(ValueError, match="asked for -1"):
        task.prompt_rows("train", -1)


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown lab task 'maths'; the lab tasks are: sentiment, arithmetic, length"):
        get_task("maths")
    with pytest.raises(ValueError, match="unknown lab task 'nope'"):
        build_reward_source("lab:nope")
