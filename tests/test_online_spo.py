"""SPO (self-play preference optimization) on the language-model online loop: each sample's
reward is its win rate against its prompt's other samples under the judge; then RLOO with the KL
penalty. Hand-worked win rates, the wiring (the judge's rates are the estimator's rewards), and
an improvement on the tiny task."""

from __future__ import annotations

import pytest
import torch

from alignlab.config import ConfigError
from alignlab.train.online import resolve_online, train_online
from alignlab.train.online.batch import RolloutBatch, rollout_files
from alignlab.train.online.judging import group_win_rates, row_judge
from test_online_train import PROMPTS, expected_reward, low_id_share, structured_policy_dir  # noqa: F401


class LengthJudge:
    """P(a > b) = 0.5 + 0.3 sign(len(a) − len(b)): the longer text wins, recording every call."""

    name = "length"

    def __init__(self):
        self.calls = []

    def prefer(self, prompts, a, b):
        self.calls.append(len(a))
        return torch.tensor([0.5 + 0.3 * ((len(x) > len(y)) - (len(x) < len(y))) for x, y in zip(a, b)])


def test_group_win_rates_by_hand():
    # one group of three: P(0>1) = 0.8, P(0>2) = 0.6, P(1>2) = 0.3
    table = {(0, 1): 0.8, (0, 2): 0.6, (1, 2): 0.3}
    rates, p = group_win_rates(lambda f, s: torch.tensor([table[i, j] for i, j in zip(f, s)]), 3, 1)
    # r0 = (0.8 + 0.6) / 2, r1 = (0.2 + 0.3) / 2, r2 = (0.4 + 0.7) / 2
    assert rates.tolist() == pytest.approx([0.7, 0.25, 0.55])
    assert float(rates.mean()) == pytest.approx(0.5)  # win rates within a group always average 1/2
    assert p[0, 2, 1].item() == pytest.approx(0.7)


def test_without_a_judge_the_rewards_judge_through_bradley_terry():
    prefer = row_judge(None, ["q"] * 2, ["a", "b"], torch.tensor([1.0, 0.0]), temperature=0.5)
    assert prefer([0], [1]).item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())


def run(tmp_path, policy_dir, tokenizer, judge=None, name="spo", **overrides):
    flags = dict(model=str(policy_dir), output_dir=str(tmp_path / name), iterations=1, prompts_per_step=4,
                 samples_per_prompt=3, max_new_tokens=8, batch_size=12, learning_rate=1e-2, lr_schedule="constant",
                 warmup_ratio=0.0, progress=False, eval_prompts=2, seed=0, temperature=1.5)
    flags.update(overrides)
    cfg = resolve_online("spo", flags=flags)
    summary = train_online(cfg, train_rows=PROMPTS, eval_rows=PROMPTS[:2], rewards=low_id_share(tokenizer),
                           judge=judge).summary
    return summary, [RolloutBatch.load(p) for p in rollout_files(tmp_path / name / "rollouts")]


def test_the_estimator_gets_each_sample_s_win_rate_in_its_group(tmp_path, tiny_policy_dir, smol_tokenizer):
    judge = LengthJudge()
    _, (batch,) = run(tmp_path, tiny_policy_dir, smol_tokenizer, judge=judge)
    assert judge.calls == [4 * 3]  # every pair of every group once, in one call
    expected = []
    for g in range(4):
        texts = batch.texts[3 * g: 3 * g + 3]
        for i in range(3):
            wins = [0.5 + 0.3 * ((len(texts[i]) > len(texts[j])) - (len(texts[i]) < len(texts[j])))
                    for j in range(3) if j != i]
            expected.append(sum(wins) / 2)
    assert batch.rewards.tolist() == pytest.approx(expected)
    assert len(set(expected)) > 1  # the check is not vacuous: the samples' lengths differ
    # RLOO on the win rates, minus the KL penalty: each sample's advantage is its shaped reward
    # minus the mean of the other samples' (kl_coef 0 here keeps the check exact)
    _, (plain,) = run(tmp_path, tiny_policy_dir, smol_tokenizer, judge=LengthJudge(), name="nokl", kl_coef=0.0)
    r = plain.rewards.reshape(4, 3)
    rloo = (r - (r.sum(-1, keepdim=True) - r) / 2).reshape(-1)
    seq_adv = (plain.advantages * plain.mask).sum(-1) / plain.mask.sum(-1)
    assert torch.allclose(seq_adv, rloo, atol=1e-5)


def test_spo_settings_read_and_refused():
    cfg = resolve_online("spo", flags=dict(judge="annotator:lab:sentiment"))
    assert cfg.samples_per_prompt == 4 and cfg.spec.estimator == "rloo" and cfg.spec.self_play
    with pytest.raises(ConfigError, match="pair_rule is set but spo training does not read it"):
        resolve_online("spo", flags=dict(pair_rule="random")).validate()
    with pytest.raises(ConfigError, match="judge is set but grpo training does not read it"):
        resolve_online("grpo", flags=dict(judge="annotator:lab:sentiment")).validate()


def test_spo_raises_the_judged_win_rate_on_the_tiny_task(tmp_path, structured_policy_dir, smol_tokenizer):
    # no judge: the tiny task's reward through Bradley-Terry, so a policy with a higher expected
    # reward wins more often against its own earlier samples
    summary, _ = run(tmp_path, structured_policy_dir, smol_tokenizer, iterations=8, samples_per_prompt=4,
                     batch_size=16, judge_temperature=0.1, temperature=1.0, prompts_per_step=6)
    assert expected_reward(summary["final_dir"], smol_tokenizer) > expected_reward(structured_policy_dir,
                                                                                   smol_tokenizer) + 0.05
