"""The LLM judge: label-token probabilities, order averaging, batching and bad input."""

import pytest
import torch

from alignlab.preferences import build_preference_source
from alignlab.preferences.judge import JudgePreference, label_token_id
from helpers import make_tiny_lm

PROMPTS = ["What is 2 + 2?", [{"role": "user", "content": "Say hi."}], "Name a colour."]
A = ["4", "hello there, friend", "blue"]
B = ["five, I think", "hi", "a colour is a property of light"]


@pytest.fixture(scope="module")
def judge(smol_tokenizer):
    return JudgePreference(make_tiny_lm(len(smol_tokenizer), seed=3), smol_tokenizer, batch_size=2)


def test_probabilities_are_a_manual_softmax_over_the_two_label_tokens(judge, smol_tokenizer):
    a_id, b_id = label_token_id(smol_tokenizer, "A"), label_token_id(smol_tokenizer, "B")
    manual_q = {}
    for order in ("ab", "ba"):
        for i, (prompt, x, y) in enumerate(zip(PROMPTS, A, B)):
            first, second = (x, y) if order == "ab" else (y, x)
            ids = torch.tensor([judge.judging_ids(prompt, first, second)])
            z = judge.model(input_ids=ids).logits[0, -1]  # one unpadded sequence
            manual_q[order, i] = (torch.exp(z[a_id]) / (torch.exp(z[a_id]) + torch.exp(z[b_id]))).item()
    q_ab = judge.first_better(PROMPTS, A, B)  # batched (size 2), right-padded
    assert q_ab.tolist() == pytest.approx([manual_q["ab", i] for i in range(3)], abs=1e-6)
    assert (q_ab - 0.5).abs().min() > 0.01  # label logits differ: the check above is not 0.5 vs 0.5
    p = judge.prefer(PROMPTS, A, B)
    expected = [0.5 * (manual_q["ab", i] + 1 - manual_q["ba", i]) for i in range(3)]
    assert p.tolist() == pytest.approx(expected, abs=1e-6)


def test_judging_prompt_holds_both_answers_in_order(judge, smol_tokenizer):
    text = smol_tokenizer.decode(judge.judging_ids("Q?", "first one", "second one"))
    assert text.index("Answer A:\nfirst one") < text.index("Answer B:\nsecond one")
    assert text.rstrip().endswith("assistant")  # the chat template's generation prompt comes last


def test_swapping_the_answers_gives_the_complement_exactly(judge):
    p_ab, p_ba = judge.prefer(PROMPTS, A, B), judge.prefer(PROMPTS, B, A)
    assert torch.equal(p_ab + p_ba, torch.ones(3))
    assert judge.prefer(["q"], ["same"], ["same"]).item() == 0.5


def test_temperature_scales_the_label_logits(smol_tokenizer):
    model = make_tiny_lm(len(smol_tokenizer), seed=3)
    cold = JudgePreference(model, smol_tokenizer, temperature=0.5).first_better(PROMPTS, A, B)
    warm = JudgePreference(model, smol_tokenizer).first_better(PROMPTS, A, B)
    logit = lambda q: torch.log(q) - torch.log1p(-q)  # noqa: E731
    assert logit(cold).tolist() == pytest.approx((2 * logit(warm)).tolist(), rel=1e-4)


def test_a_nan_from_the_model_is_a_clear_error(smol_tokenizer):
    model = make_tiny_lm(len(smol_tokenizer))
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="judge-nan.*nan for pair 0"):
        JudgePreference(model, smol_tokenizer, name="judge-nan").prefer(["q"], ["a"], ["b"])


def test_bad_labels_and_templates_are_errors(smol_tokenizer):
    model = make_tiny_lm(len(smol_tokenizer))
    with pytest.raises(ValueError, match="'Answer one' is [0-9]+ tokens"):
        JudgePreference(model, smol_tokenizer, labels=("Answer one", "B"))
    with pytest.raises(ValueError, match="lacks the field"):
        JudgePreference(model, smol_tokenizer, template="{question} {first}")
    with pytest.raises(ValueError, match="over max_length=5"):
        JudgePreference(model, smol_tokenizer, max_length=5).prefer(["q"], ["a"], ["b"])


def test_judge_spec_loads_a_model_folder(tiny_policy_dir, tmp_path):
    template = tmp_path / "t.txt"
    template.write_text("Q: {question}\n1) {first}\n2) {second}\nBest (1 or 2)?")
    source = build_preference_source(f"judge:{tiny_policy_dir}", template=f"@{template}", labels="1,2")
    assert source.labels == ("1", "2") and source.name == f"judge:{tiny_policy_dir}"
    p = source.prefer(PROMPTS, A, B)
    assert ((p > 0) & (p < 1)).all()
    with pytest.raises(ValueError, match="unknown option.*colour"):
        build_preference_source(f"judge:{tiny_policy_dir}", colour="red")


def test_importing_preferences_loads_no_model_code():
    import subprocess
    import sys

    code = ("import sys, alignlab.preferences; "
            "print(sorted(m for m in ('alignlab.preferences.judge', 'alignlab.preferences.pairwise', 'transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
