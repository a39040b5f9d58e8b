"""The verifiable math reward (math-verify) and the prompt-rows reader."""

import json
import re
import threading

import pytest
import torch

from alignlab.data.errors import DataError
from alignlab.data.prompts import read_prompt_rows
from alignlab.rewards.base import RewardSource
from alignlab.rewards.bon import read_prompts
from alignlab.rewards.spec import build_reward_source
from alignlab.rewards.verifiable import AnswerReward, answer_key, answers_of, exact_match


@pytest.mark.parametrize("response", ["The answer is 12.", "12", "\\boxed{12}", "12.0", "$12$",
                                      "7 + 5 = 12", "The final answer is $\\boxed{12}$.",
                                      "The answer is 12. Then 3 more would make 15."])
def test_right_final_answers_score_one(response):
    assert exact_match([response], ["12"]).tolist() == [1.0]


@pytest.mark.parametrize("response", ["13", "The answer is 13.", "\\boxed{13}", "twelve", "", "-12",
                                      "7 + 5 = 12, no wait, 11"])
def test_wrong_or_missing_answers_score_zero(response):
    assert exact_match([response], ["12"]).tolist() == [0.0]


def test_latex_reference_answers_compare_as_math():
    got = exact_match(["0.5", "The answer is $\\frac{2}{4}$", "\\boxed{3\\pi}", "3"],
                      ["\\frac{1}{2}", "1/2", "3\\pi", "3\\pi"])
    assert got.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_exact_match_checks_its_arguments():
    with pytest.raises(ValueError, match="one answer per response"):
        exact_match(["1", "2"], ["1"])
    with pytest.raises(TypeError, match="lists"):
        exact_match("12", "12")


def test_answer_reward_looks_up_message_list_and_text_prompts():
    q1 = [{"role": "user", "content": "What is 7 + 5?"}]
    q2 = "What is 2 * 3?"
    reward = AnswerReward({answer_key(q1): "12", answer_key(q2): "6"})
    assert isinstance(reward, RewardSource) and reward.name == "math"
    scores = reward.score([q1, q2, q1, q2], ["It is 12.", "\\boxed{6}", "13", "The answer is 5"])
    assert scores.dtype == torch.float32 and scores.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert not scores.requires_grad


def test_answer_key_tells_roles_and_texts_apart():
    user = [{"role": "user", "content": "What is 7 + 5?"}]
    system = [{"role": "system", "content": "What is 7 + 5?"}]
    assert answer_key(user) != answer_key(system) != answer_key("What is 7 + 5?")
    assert answer_key(user) == answer_key([dict(user[0])])


def test_missing_answer_names_the_prompt_truncated():
    long_prompt = "How many apples? " + "x" * 200
    reward = AnswerReward({"What is 1 + 1?": "2"}, name="arith")
    with pytest.raises(ValueError, match="no reference answer for prompt 'How many apples") as info:
        reward.score([long_prompt], ["2"])
    assert "'arith'" in str(info.value) and "x" * 63 in str(info.value) and "x" * 64 not in str(info.value)
    with pytest.raises(ValueError, match="one prompt per response"):
        reward.score(["What is 1 + 1?"], ["2", "3"])


def test_unreadable_reference_answer_is_an_error_not_a_silent_zero():
    with pytest.raises(ValueError, match="cannot read the reference answer"):
        exact_match(["12"], ["\\text{}"])


def test_works_outside_the_main_thread():
    # math-verify's signal.alarm timeout raises ValueError off the main thread unless disabled
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        scores=exact_match(["The answer is 12.", "13"], ["12", "12"]).tolist()))
    thread.start()
    thread.join()
    assert result["scores"] == [1.0, 0.0]


def test_math_spec_builds_an_answer_reward():
    prompt = [{"role": "user", "content": "What is 3 + 4?"}]
    source = build_reward_source("math", answers=answers_of([{"prompt": prompt, "answer": 7}]))
    assert source.score([prompt, prompt], ["7", "8"]).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="answer"):
        build_reward_source("math", answers={})


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_prompt_rows_jsonl_keeps_prompt_and_answer_as_text(tmp_path):
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    path = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": "Hi", "id": 3}), "",
                                         json.dumps({"prompt": chat, "answer": 4}),
                                         json.dumps({"prompt": "x", "answer": " 1/2 "})])
    assert read_prompt_rows(path) == [{"prompt": "Hi"}, {"prompt": chat, "answer": "4"},
                                      {"prompt": "x", "answer": "1/2"}]
    assert read_prompts(path) == ["Hi", chat, "x"]


def test_read_prompt_rows_txt_is_one_prompt_per_non_blank_line(tmp_path):
    path = _write(tmp_path / "p.txt", ["first prompt", "   ", "second {\"prompt\"}"])
    assert read_prompt_rows(path) == [{"prompt": "first prompt"}, {"prompt": "second {\"prompt\"}"}]
    assert read_prompts(path) == ["first prompt", "second {\"prompt\"}"]


@pytest.mark.parametrize("bad_line, field, message", [
    ("{not json", None, "not valid JSON"),
    ('["a list"]', None, "expected a JSON object"),
    ('{"text": "no prompt"}', "prompt", "got nothing"),
    ('{"prompt": "  "}', "prompt", "got blank text"),
    ('{"prompt": 3}', "prompt", "got int"),
    ('{"prompt": []}', "prompt", "empty message list"),
    ('{"prompt": [{"role": "user"}]}', "prompt", "message 0 without"),
    ('{"prompt": "ok", "answer": true}', "answer", "got True"),
    ('{"prompt": "ok", "answer": ""}', "answer", "non-empty"),
    ('{"prompt": "ok", "answer": [1]}', "answer", "got \\[1\\]"),
])
def test_read_prompt_rows_errors_name_file_line_and_field(tmp_path, bad_line, field, message):
    path = _write(tmp_path / "bad.jsonl", ['{"prompt": "fine"}', "", bad_line])
    with pytest.raises(DataError, match=message) as info:
        read_prompt_rows(path)
    err = info.value
    assert err.file == str(path) and err.location == "line 3" and err.field == field
    expected_where = f"{path}, line 3" + (f", field '{field}'" if field else "") + ": "
    assert str(err).startswith(expected_where)
    # the Best-of-N reader is the same reader, but keeps its ValueError (`alignlab bon` exits 2)
    with pytest.raises(ValueError, match=re.escape(expected_where)) as info:
        read_prompts(path)
    assert not isinstance(info.value, DataError)


def test_read_prompt_rows_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompt_rows(tmp_path / "nope.jsonl")


def test_exact_match_wants_the_number_written_out_unless_lenient():
    # GRPO learned to end on the unevaluated expression, which math-verify evaluates; exact match refuses it
    from alignlab.rewards.spec import build_reward_source
    from alignlab.rewards.verifiable import is_correct

    hacked = "Anna has 17 apples, buys 3 more, and gives 17 away, so she has 17 + 3 - 17"
    assert not is_correct(hacked, "3") and is_correct(hacked, "3", literal=False)
    for ok in ("So she has 3 apples.", "\\boxed{3}", "17 + 3 - 17 = 3"):
        assert is_correct(ok, "3")
    assert is_correct("$\\frac{1}{2}$", "1/2") and is_correct("It costs 1,200 dollars.", "1200")
    prompt = [{"role": "user", "content": "Anna has 17 apples..."}]
    from alignlab.rewards.verifiable import answer_key

    answers = {answer_key(prompt): "3"}
    assert build_reward_source("math", answers=answers).score([prompt], [hacked]).tolist() == [0.0]
    assert build_reward_source("math:lenient", answers=answers).score([prompt], [hacked]).tolist() == [1.0]
    with pytest.raises(ValueError, match="math:lenient"):
        build_reward_source("math:loose", answers=answers)
