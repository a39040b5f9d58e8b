"""Nash-MD's opponent sampler: the token-level geometric mixture of a policy and a reference,
sampled inside the policy's `generate` with the reference's own KV cache."""

import pytest
import torch

from alignlab.losses.nash import geometric_mixture_logps
from alignlab.rollout.base import SamplingParams
from alignlab.rollout.hf import HFGenerator
from alignlab.rollout.mixture import Mixture
from test_rollout_hf import EOS, PROMPTS, VOCAB, sharp_lm


@pytest.fixture(scope="module")
def pair():
    return sharp_lm(VOCAB, seed=0), sharp_lm(VOCAB, seed=1)


def teacher_forced_mixture(policy, reference, prompt, completion, m, temperature):
    """log pi^mu of each completion token from one unpadded forward of each model."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        lp = torch.log_softmax(policy(ids).logits[0].float() / temperature, -1)
        lr = torch.log_softmax(reference(ids).logits[0].float() / temperature, -1)
    mixed = geometric_mixture_logps(lp, lr, m)[len(prompt) - 1 : -1]  # (T, V)
    return mixed.gather(1, torch.tensor(completion)[:, None])[:, 0]


@pytest.mark.parametrize("m,temperature", [(0.5, 1.0), (0.25, 0.7)])
def test_mixture_logprobs_equal_a_teacher_forced_mixture_under_left_padding(pair, m, temperature):
    policy, reference = pair
    gen = HFGenerator(policy, eos_token_id=EOS, batch_size=8, mixture=Mixture(reference, m))
    out = gen.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=12, seed=4, temperature=temperature))
    assert max(len(c) for c in out.completion_ids) > 5
    for i in range(len(out)):
        expected = teacher_forced_mixture(policy, reference, out.prompt_ids[i], out.completion_ids[i], m, temperature)
        torch.testing.assert_close(out.logprobs[i], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("m", [0.0, 1.0])
def test_the_ends_of_the_mixture_sample_the_policy_and_the_reference(pair, m):
    policy, reference = pair
    params = SamplingParams(n=2, max_new_tokens=10, seed=7)
    seeds = [11, 12, 13, 14]
    mixed = HFGenerator(policy, eos_token_id=EOS, mixture=Mixture(reference, m)).generate(PROMPTS, params, seeds=seeds)
    alone = HFGenerator(reference if m == 1.0 else policy, eos_token_id=EOS).generate(PROMPTS, params, seeds=seeds)
    assert mixed.completion_ids == alone.completion_ids
    for a, b in zip(mixed.logprobs, alone.logprobs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_greedy_mixture_decodes_the_mixture_argmax(pair):
    policy, reference = pair
    out = HFGenerator(policy, eos_token_id=EOS, mixture=Mixture(reference, 0.5)).generate(
        PROMPTS, SamplingParams(greedy=True, max_new_tokens=8))
    for prompt, completion in zip(out.prompt_ids, out.completion_ids):
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            lp, lr = (torch.log_softmax(mdl(ids).logits[0], -1) for mdl in (policy, reference))
        argmax = geometric_mixture_logps(lp, lr, 0.5)[len(prompt) - 1 : -1].argmax(-1)
        assert argmax.tolist() == completion


def test_mixture_coef_outside_0_1_is_refused(pair):
    with pytest.raises(ValueError, match="mixture_coef must be in"):
        Mixture(pair[1], 1.5)
