"""Online trainers wired as their papers say: the KL in PPO-Lagrangian's combined advantage, ReMax's
baseline shaped as its samples, PAR sampling the reference policy, PF-PPO's group statistics over
the kept samples, and the combinations refused (issue 19, defects 4-8)."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.config import ConfigError
from alignlab.data.tokenize import encode_prompt
from alignlab.losses.advantages import group_advantages
from alignlab.rewards.base import FunctionReward
from alignlab.rollout.base import SamplingParams
from alignlab.rollout.hf import HFGenerator
from alignlab.train.online import resolve_online, train_online
from alignlab.train.online.batch import RolloutBatch, pad_tokens, rollout_files
from alignlab.train.online.rollout import prompt_seeds

WORDS = ["cats", "rain", "tea", "maps", "trains", "bread", "snow", "music"]
PROMPTS = [{"prompt": [{"role": "user", "content": f"Tell me about {w}."}]} for w in WORDS]


def recording_reward(tokenizer, calls: list, offset: float = 0.0):
    """offset + share of low-id tokens; every call's (prompts, responses, scores) is recorded."""
    half = len(tokenizer) // 2

    def reward(prompts, texts):
        out = []
        for t in texts:
            ids = tokenizer(t, add_special_tokens=False)["input_ids"]
            out.append(offset + sum(i < half for i in ids) / max(len(ids), 1))
        calls.append((list(prompts), list(texts), torch.tensor(out)))
        return out

    return FunctionReward(reward, name="low_ids")


def train(tmp_path, policy_dir, method, rewards, **overrides):
    flags = dict(model=str(policy_dir), output_dir=str(tmp_path / method), iterations=1, prompts_per_step=4,
                 max_new_tokens=8, batch_size=8, learning_rate=1e-2, lr_schedule="constant", warmup_ratio=0.0,
                 kl_coef=0.0, progress=False, eval_prompts=2, seed=0, samples_per_prompt=4)
    flags.update(overrides)
    cfg = resolve_online(method, flags=flags)
    summary = train_online(cfg, train_rows=PROMPTS, eval_rows=PROMPTS[:2], rewards=rewards).summary
    batches = [RolloutBatch.load(p) for p in rollout_files(tmp_path / method / "rollouts")]
    return summary, batches


# -- defect 4: PPO-Lagrangian keeps -beta * KL in the combined advantage -------------------------------
@pytest.mark.parametrize("multiplier", [0.0, 1.0, 4.0])
def test_ppo_lagrangian_combined_advantage_keeps_minus_beta_kl_for_every_lambda(tiny_policy_dir, smol_tokenizer,
                                                                               multiplier):
    from alignlab.models.load import load_policy
    from alignlab.train.online.rollout import Controllers, RolloutMaker

    beta = 0.1
    cfg = resolve_online("ppo_lagrangian", flags=dict(cost="python:unused:unused", kl_coef=beta, gamma=1.0, lam=1.0,
                                                      whiten_advantages=False))
    zero = FunctionReward(lambda texts: [0.0] * len(texts), responses_only=True)
    maker = RolloutMaker(cfg, model=load_policy(str(tiny_policy_dir)), scorer=None, reference_scorer=None,
                         tokenizer=smol_tokenizer, rewards=zero, cost=zero, pad_token_id=0)
    lengths = [3, 2]
    batch = RolloutBatch(0, 1, ["a", "b"], [[1], [1]], [[5] * k for k in lengths], ["x", "y"], [True, True],
                         mask=pad_tokens([[1.0] * k for k in lengths]), old_logps=torch.zeros(2, 3),
                         rewards=torch.zeros(2), old_values=torch.zeros(2, 3, 2))
    kl = torch.tensor([[0.5, -0.2, 0.3], [0.1, 0.4, 9.0]])  # 9.0 sits on a pad position: never counted
    maker._advantages(batch, torch.zeros(2), kl, None, Controllers(kl_coef=beta, lagrange=multiplier))
    future_kl = torch.tensor([[0.6, 0.1, 0.3], [0.5, 0.4, 0.0]])  # sum_{s >= t} kl_s over real tokens
    assert torch.allclose(batch.advantages, -beta * future_kl, atol=1e-6)


def test_lagrange_multiplier_updates_match_hand_values():
    from alignlab.losses.control import lagrange_update, lagrange_update_log

    # additive: lambda + lr (J_C - d), projected onto >= 0
    assert lagrange_update(2.0, 0.0, threshold=0.2, lr=0.1) == pytest.approx(1.98)
    assert lagrange_update(0.01, 0.0, threshold=0.2, lr=0.1) == 0.0
    # log space: log lambda + lr * lambda * (J_C - d)
    assert lagrange_update_log(1.0, 0.5, threshold=0.2, lr=0.1) == pytest.approx(math.exp(0.03))
    assert lagrange_update_log(2.0, 0.0, threshold=0.2, lr=0.1) == pytest.approx(2.0 * math.exp(-0.04))
    assert lagrange_update_log(0.01, -100.0, threshold=0.0, lr=0.1) == pytest.approx(0.01 * math.exp(-0.1))  # > 0
    assert lagrange_update_log(2.0, 5.0, threshold=0.0, lr=1.0, max_value=3.0) == 3.0
    with pytest.raises(ValueError):
        lagrange_update_log(0.0, 1.0, threshold=0.0, lr=0.1)


@pytest.mark.parametrize("update", ["additive", "log"])
def test_ppo_lagrangian_trainer_applies_the_chosen_multiplier_update(tmp_path, tiny_policy_dir, smol_tokenizer, update):
    calls: list = []
    cfg = resolve_online("ppo_lagrangian", flags=dict(
        model=str(tiny_policy_dir), output_dir=str(tmp_path / "run"), iterations=2, prompts_per_step=4, max_new_tokens=6,
        batch_size=8, progress=False, eval_prompts=2, cost="python:unused:unused", cost_threshold=0.1,
        lagrange_init=0.5, lagrange_lr=0.8, lagrange_update=update))
    cost = FunctionReward(lambda texts: [len(t) / 40 for t in texts], name="chars", responses_only=True)
    train_online(cfg, train_rows=PROMPTS, eval_rows=PROMPTS[:2], rewards=recording_reward(smol_tokenizer, calls),
                 cost=cost)
    lam = 0.5
    for path in rollout_files(tmp_path / "run" / "rollouts"):
        batch = RolloutBatch.load(path)
        j = float(batch.costs.mean())
        lam = max(0.0, lam + 0.8 * (j - 0.1)) if update == "additive" else lam * math.exp(0.8 * lam * (j - 0.1))
        assert batch.controller["lagrange"] == pytest.approx(lam, rel=1e-6)


def test_lagrange_update_setting_is_checked():
    with pytest.raises(ConfigError, match="lagrange_update"):
        resolve_online("ppo_lagrangian", flags=dict(cost="python:a:b", lagrange_update="exp"))
    with pytest.raises(ConfigError, match="lagrange_init > 0"):
        resolve_online("ppo_lagrangian", flags=dict(cost="python:a:b", lagrange_update="log", lagrange_init=0.0))


# -- defect 5: ReMax's greedy baseline goes through the samples' transformations ------------------------
def test_remax_baseline_is_normalized_like_the_samples(tmp_path, tiny_policy_dir, smol_tokenizer):
    from alignlab.models.load import load_policy

    calls: list = []
    _, (batch,) = train(tmp_path, tiny_policy_dir, "remax", recording_reward(smol_tokenizer, calls, offset=10.0),
                        reward_normalize=True, reward_clip=5.0, length_penalty=0.01)
    (samples,) = [scores for _, texts, scores in calls if len(texts) == 16]
    (greedy_prompts, greedy_texts, greedy_scores), = [c for c in calls if len(c[1]) == 4]
    # the greedy completions' lengths, as the trainer drew them (iteration 0, seed 0)
    ids = [encode_prompt(smol_tokenizer, p) for p in greedy_prompts]
    out = HFGenerator(load_policy(str(tiny_policy_dir)).eval(), smol_tokenizer, batch_size=64).generate(
        ids, SamplingParams(n=1, max_new_tokens=8, seed=0, greedy=True))
    assert out.texts == greedy_texts
    lengths = torch.tensor([len(c) for c in batch.completion_ids], dtype=torch.float32)
    greedy_lengths = torch.tensor([len(c) for c in out.completion_ids], dtype=torch.float32)
    raw = samples - 0.01 * lengths  # the length penalty, on samples and greedy alike
    greedy_raw = greedy_scores - 0.01 * greedy_lengths
    mean, std = raw.mean(), raw.std(unbiased=False)  # the running moments after this one batch
    want_baseline = ((greedy_raw - mean) / std).clamp(-5, 5)
    assert torch.allclose(batch.baseline, want_baseline, atol=1e-4)
    want = ((raw - mean) / std).clamp(-5, 5) - want_baseline.repeat_interleave(4)
    assert torch.allclose(batch.advantages[:, 0], want, atol=1e-4)
    # an unshaped baseline (~10.4, the raw offset) would put every advantage near -10
    assert batch.advantages[:, 0].mean() > -6.0


# -- defect 6: PAR's references come from the reference policy under full fine-tuning -------------------
def test_par_references_are_sampled_from_the_reference_policy(tmp_path, tiny_policy_dir, smol_tokenizer):
    from alignlab.models.load import load_policy

    calls: list = []
    summary, batches = train(tmp_path, tiny_policy_dir, "grpo", recording_reward(smol_tokenizer, calls),
                             iterations=2, samples_per_prompt=2, par_references=3, learning_rate=5e-2)
    references = [(prompts, texts) for prompts, texts, _ in calls if len(texts) == 12]  # 4 prompts x 3
    assert len(references) == 2 and len(batches) == 2
    initial = HFGenerator(load_policy(str(tiny_policy_dir)).eval(), smol_tokenizer, batch_size=64)
    final = HFGenerator(load_policy(summary["final_dir"]).eval(), smol_tokenizer, batch_size=64)
    for iteration, (prompts, texts) in enumerate(references):
        ids = [encode_prompt(smol_tokenizer, p) for p in prompts[::3]]
        params = SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=iteration + 1_000_000)
        seeds = prompt_seeds(params, len(ids))  # each prompt's samples seeded on their own
        assert initial.generate(ids, params, seeds=seeds).texts == texts
        if iteration == 1:  # the trained policy would have drawn other samples
            assert final.generate(ids, params, seeds=seeds).texts != texts


# -- defect 7: PF-PPO computes group statistics over the kept samples ------------------------------------
@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_policy_filter_advantages_use_the_kept_samples_only(tmp_path, tiny_policy_dir, smol_tokenizer, method):
    _, (batch,) = train(tmp_path, tiny_policy_dir, method, recording_reward(smol_tokenizer, []),
                        policy_filter="best_worst")
    keep = batch.keep
    kept_rewards = batch.rewards[keep]  # (P * 2,): best and worst of each group, prompt-major
    if method == "grpo":  # (r - mean over the 2 kept) / (sample std over the 2 kept + eps)
        want = group_advantages(kept_rewards, 2)
        pairs = kept_rewards.reshape(-1, 2)
        manual = (pairs - pairs.mean(-1, keepdim=True)) / (pairs.std(-1, keepdim=True) + 1e-4)
        assert torch.allclose(want, manual.reshape(-1))
    else:  # leave-one-out over the kept: r_i - r_other
        pairs = kept_rewards.reshape(-1, 2)
        want = (pairs - pairs.flip(-1)).reshape(-1)
    assert torch.allclose(batch.advantages[keep, 0], want, atol=1e-5)
    assert (batch.advantages[~keep] == 0).all()
    assert (kept_rewards.reshape(-1, 2)[:, 0] != kept_rewards.reshape(-1, 2)[:, 1]).any()  # a test with signal


# -- defect 8 and the filter's group size: combinations refused ---------------------------------------
def test_filters_that_break_the_methods_group_are_refused():
    with pytest.raises(ConfigError, match="pairs would mix prompts"):
        resolve_online("p3o", flags={"policy_filter": "best_of_n"})
    with pytest.raises(ConfigError, match="keeps 1"):
        resolve_online("grpo", flags={"policy_filter": "best_of_n"})
    assert resolve_online("p3o", flags={"policy_filter": "best_worst", "samples_per_prompt": 4}).policy_filter
    assert resolve_online("reinforce_pp", flags={"policy_filter": "best_of_n", "samples_per_prompt": 4})
