"""HFGenerator against the model itself: layout of the results, padding, log-probs, stopping,
seeding, and one run of the real embedded model on the sentiment task."""

import pytest
import torch

from alignlab.rollout.base import Completions, RolloutBackend, SamplingParams
from alignlab.data.tokenize import encode_prompt as encode_chat_prompt
from alignlab.rollout.hf import HFGenerator, generate_texts, inverse_cdf_sample
from helpers import make_tiny_lm

VOCAB, EOS = 64, 2
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29]]


def sharp_lm(vocab_size: int, seed: int = 0):
    """A tiny random Llama whose next token depends on its context. At the default init
    (std 0.02) the next-token distribution is near uniform and greedy decoding just repeats the
    last prompt token, so padding or position bugs would go unseen."""
    model = make_tiny_lm(vocab_size, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=generator)
    return model.eval()


@pytest.fixture(scope="module")
def lm():
    return sharp_lm(VOCAB)


def teacher_forced_logps(model, prompt: list[int], completion: list[int], temperature: float = 1.0):
    """log softmax(logits / T)[token] of each completion token from one unpadded forward."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0].float() / temperature  # (P + T, V)
    steps = logits[len(prompt) - 1 : -1]  # the positions that predict the completion, (T, V)
    return torch.log_softmax(steps, -1).gather(1, torch.tensor(completion)[:, None])[:, 0]


def test_is_a_rollout_backend(lm):
    assert isinstance(HFGenerator(lm, eos_token_id=EOS), RolloutBackend)


def test_n_samples_per_prompt_come_prompt_major(lm):
    out = HFGenerator(lm, eos_token_id=EOS, batch_size=5).generate(PROMPTS, SamplingParams(n=3, max_new_tokens=6))
    assert isinstance(out, Completions) and len(out) == 12 and out.num_prompts == 4 and out.n == 3
    assert out.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert out.prompt_ids == [PROMPTS[i] for i in out.prompt_index]
    assert out.texts is None  # no tokenizer
    for ids, lp in zip(out.completion_ids, out.logprobs):
        assert 1 <= len(ids) <= 6 and lp.shape == (len(ids),) and lp.dtype == torch.float32
    # the n samples of a prompt are distinct draws, not copies
    assert len({tuple(c) for c in out.completion_ids[0:3]}) > 1


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_left_padding_gives_the_same_greedy_completion_as_each_prompt_alone(lm, batch_size):
    gen = HFGenerator(lm, eos_token_id=EOS, batch_size=batch_size)
    params = SamplingParams(greedy=True, max_new_tokens=12)
    batched = gen.generate(PROMPTS, params)
    alone = [gen.generate([p], params).completion_ids[0] for p in PROMPTS]
    assert batched.completion_ids == alone
    assert batched.logprobs is None
    assert len({tuple(c) for c in alone}) == len(PROMPTS)  # the model does look at its context


@pytest.mark.parametrize("params", [
    SamplingParams(n=3, max_new_tokens=15, seed=1),
    SamplingParams(n=3, max_new_tokens=15, seed=2, temperature=0.7),
    # truncation changes what is sampled, not what is recorded: the untruncated log-prob
    SamplingParams(n=3, max_new_tokens=15, seed=3, top_k=5, top_p=0.8),
], ids=["t1", "t0.7", "topk-topp"])
def test_logprobs_equal_a_teacher_forced_forward(lm, params):
    out = HFGenerator(lm, eos_token_id=EOS, batch_size=8).generate(PROMPTS, params)
    for i in range(len(out)):
        expected = teacher_forced_logps(lm, out.prompt_ids[i], out.completion_ids[i], params.temperature)
        torch.testing.assert_close(out.logprobs[i], expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.logprob_sums(), torch.stack([lp.sum() for lp in out.logprobs]))


def test_logprobs_are_ordinary_tensors_a_trainer_can_use(lm):
    # regression: generation ran under inference_mode, whose tensors refuse in-place updates and
    # being saved for backward ("Inference tensors cannot be saved for backward")
    out = HFGenerator(lm, eos_token_id=EOS).generate(PROMPTS[:1], SamplingParams(max_new_tokens=4))
    old = out.logprobs[0]
    assert not old.is_inference()
    old.add_(0.0)
    new = torch.zeros_like(old, requires_grad=True)
    (new * old).sum().backward()
    torch.testing.assert_close(new.grad, old)


def test_top_k_1_and_tiny_top_p_sample_the_greedy_tokens(lm):
    gen = HFGenerator(lm, eos_token_id=EOS)
    greedy = gen.generate(PROMPTS, SamplingParams(greedy=True, max_new_tokens=10)).completion_ids
    assert gen.generate(PROMPTS, SamplingParams(top_k=1, max_new_tokens=10)).completion_ids == greedy
    assert gen.generate(PROMPTS, SamplingParams(top_p=1e-6, max_new_tokens=10)).completion_ids == greedy


def check_lengths_and_eos(out: Completions, eos_ids: set[int], max_new_tokens: int):
    for ids, done in zip(out.completion_ids, out.finished):
        body = ids[:-1] if done else ids
        assert not eos_ids & set(body), "EOS only ever as the last token"
        if done:  # finished on EOS: the EOS is part of the completion, so a trainer trains on it
            assert ids[-1] in eos_ids and len(ids) <= max_new_tokens
        else:
            assert len(ids) == max_new_tokens


@pytest.mark.parametrize("pad_token_id", [None, 0], ids=["pad=eos", "pad!=eos"])
def test_max_new_tokens_finished_flag_and_eos_kept(lm, pad_token_id):
    gen = HFGenerator(lm, eos_token_id=EOS, pad_token_id=pad_token_id)
    out = gen.generate(PROMPTS, SamplingParams(n=16, max_new_tokens=30, seed=0))
    check_lengths_and_eos(out, {EOS}, 30)
    assert 0 < sum(out.finished) < len(out)  # both kinds occur with this seed
    assert all(lp.shape == (len(ids),) for lp, ids in zip(out.logprobs, out.completion_ids))


def test_several_eos_ids_each_end_a_completion(lm):
    eos_ids = [2, 3, 4, 5]
    out = HFGenerator(lm, eos_token_id=eos_ids).generate(PROMPTS, SamplingParams(n=8, max_new_tokens=30))
    check_lengths_and_eos(out, set(eos_ids), 30)
    assert len({ids[-1] for ids, done in zip(out.completion_ids, out.finished) if done}) > 1


def test_the_seed_reproduces_and_the_global_rng_is_untouched(lm):
    gen = HFGenerator(lm, eos_token_id=EOS, batch_size=3)
    rng = torch.get_rng_state()
    first = gen.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=12, seed=7))
    assert torch.equal(torch.get_rng_state(), rng)
    again = gen.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=12, seed=7))
    other = gen.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=12, seed=8))
    assert first.completion_ids == again.completion_ids
    assert all(torch.equal(x, y) for x, y in zip(first.logprobs, again.logprobs))
    assert first.completion_ids != other.completion_ids


def test_training_mode_is_restored(lm):
    lm.train()
    try:
        HFGenerator(lm, eos_token_id=EOS).generate(PROMPTS[:1], SamplingParams(max_new_tokens=2))
        assert lm.training
    finally:
        lm.eval()


def test_model_generation_config_does_not_change_the_sampled_distribution():
    # regression: generate() filled unset fields from model.generation_config, so e.g. Qwen2.5's
    # repetition_penalty=1.05 altered the logits before sampling and the recorded log-probs were off
    model = sharp_lm(VOCAB, seed=1)
    model.generation_config.update(repetition_penalty=1.5, no_repeat_ngram_size=2, do_sample=True, top_k=3,
                                   temperature=0.3, min_length=20)
    gen = HFGenerator(model, eos_token_id=EOS)
    out = gen.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=15, seed=1))
    for i in range(len(out)):
        expected = teacher_forced_logps(model, out.prompt_ids[i], out.completion_ids[i])
        torch.testing.assert_close(out.logprobs[i], expected, atol=1e-4, rtol=0)
    greedy = gen.generate(PROMPTS, SamplingParams(greedy=True, max_new_tokens=10)).completion_ids
    plain = HFGenerator(sharp_lm(VOCAB, seed=1), eos_token_id=EOS)
    assert greedy == plain.generate(PROMPTS, SamplingParams(greedy=True, max_new_tokens=10)).completion_ids


@pytest.mark.parametrize("name, value", [("suppress_tokens", [7]), ("forced_bos_token_id", 0),
                                         ("min_new_tokens", 3)])
def test_logit_changes_that_cannot_be_switched_off_are_refused(name, value):
    model = sharp_lm(VOCAB)
    model.generation_config.min_new_tokens = 0  # off: accepted
    HFGenerator(model, eos_token_id=EOS).generate(PROMPTS, SamplingParams(max_new_tokens=2))
    setattr(model.generation_config, name, value)
    with pytest.raises(ValueError, match=name):
        HFGenerator(model, eos_token_id=EOS).generate(PROMPTS, SamplingParams(max_new_tokens=2))


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n must be"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
])
def test_sampling_params_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_sampling_params_accepts_greedy_at_temperature_0_and_a_bare_stop_string():
    assert SamplingParams(greedy=True, temperature=0.0).greedy
    assert SamplingParams(stop_strings="\n").stop_strings == ("\n",)


def test_generator_input_errors(lm):
    gen = HFGenerator(lm, eos_token_id=EOS)
    with pytest.raises(ValueError, match="at least one token"):
        gen.generate([[5], []], SamplingParams())
    with pytest.raises(ValueError, match="needs a tokenizer"):
        gen.generate([[5]], SamplingParams(stop_strings=("x",)))
    with pytest.raises(ValueError, match="greedy"):
        gen.generate([[5]], SamplingParams(greedy=True, max_new_tokens=2)).logprob_sums()


def test_stop_strings_end_the_completion_right_after_the_string(smol_tokenizer):
    tokenizer = smol_tokenizer
    model = sharp_lm(len(tokenizer))
    gen = HFGenerator(model, tokenizer)
    prompts = [encode_chat_prompt(tokenizer, [{"role": "user", "content": c}]) for c in ["Hi there", "A long topic."]]
    free = gen.generate(prompts, SamplingParams(greedy=True, max_new_tokens=10))
    stop = tokenizer.decode(free.completion_ids[0][4:6])
    assert stop not in tokenizer.decode(free.completion_ids[1])
    out = gen.generate(prompts, SamplingParams(greedy=True, max_new_tokens=10, stop_strings=(stop,)))
    assert out.completion_ids[0] == free.completion_ids[0][:6] and out.texts[0].endswith(stop)
    assert out.completion_ids[1] == free.completion_ids[1]
    assert out.finished == [True, free.finished[1]]


def test_generate_texts_decodes_chat_prompts(tiny_policy_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_policy_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    prompts = [[{"role": "user", "content": "Write one sentence about bread."}]]
    out = generate_texts(model, tokenizer, prompts, SamplingParams(n=2, max_new_tokens=5))
    assert out.prompt_ids[0] == encode_chat_prompt(tokenizer, prompts[0])
    assert tokenizer.decode(out.prompt_ids[0]).endswith("<|im_start|>assistant\n")
    assert out.texts == tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)


@pytest.mark.integration
def test_embedded_model_writes_sentences_the_gold_reward_scores():
    from alignlab.lab.sentiment import SentimentTask
    from alignlab.models.load import load_policy, load_tokenizer

    tokenizer, model = load_tokenizer("embedded"), load_policy("embedded")
    task = SentimentTask()
    prompts, _ = task.split(8, 0, seed=0)
    out = generate_texts(model, tokenizer, prompts, SamplingParams(max_new_tokens=24, seed=0))
    assert len(out.texts) == 8
    for text, ids, done in zip(out.texts, out.completion_ids, out.finished):
        assert text.strip()
        letters = sum(c.isascii() and c.isalpha() for c in text)
        assert letters >= 0.6 * len(text.replace(" ", "")), text  # English-ish, not byte soup
        assert ids[-1] == tokenizer.eos_token_id if done else len(ids) == 24
    gold = task.gold_reward(out.texts)
    assert gold.shape == (8,) and bool(((gold >= -1) & (gold <= 1)).all())


@pytest.mark.parametrize("block", [2, 3, 256])
def test_inverse_cdf_sample_draws_each_token_with_its_probability(block):
    weights = torch.tensor([0.0, 2.0, 1.0, 0.0, 4.0, 0.5, 0.5])  # unnormalized, zeros inside and at the start
    n = 60_000
    g = torch.Generator().manual_seed(0)
    drawn = inverse_cdf_sample(weights.expand(n, -1).contiguous(), g, block=block).flatten()
    freq = torch.bincount(drawn, minlength=7).double() / n
    want = (weights / weights.sum()).double()
    assert freq[weights == 0].sum() == 0
    # 5 standard errors per token
    assert ((freq - want).abs() <= 5 * (want * (1 - want) / n).sqrt() + 1e-12).all(), (freq, want)
    again = inverse_cdf_sample(weights.expand(n, -1).contiguous(), torch.Generator().manual_seed(0), block=block)
    assert torch.equal(again.flatten(), drawn)


def test_inverse_cdf_sample_handles_a_single_allowed_token_anywhere():
    for position in (0, 255, 256, 999):
        weights = torch.zeros(4, 1000)
        weights[:, position] = 3.0
        assert (inverse_cdf_sample(weights, torch.Generator().manual_seed(1)) == position).all()
