"""INPO (iterative Nash policy optimization) on the language-model online loop: pairs of the
current policy's samples judged by a preference source, and INPO's squared loss against the
policy that sampled them (pi_t) and the fixed reference. Hand-worked loss, the wiring (which
log-probs are pi_t's and which the reference's), and an improvement on the tiny task."""

from __future__ import annotations

import pytest
import torch

from alignlab.config import ConfigError
from alignlab.losses.nash import inpo_loss, inpo_pair_losses
from alignlab.models.load import load_policy
from alignlab.models.policy_value import PolicyValue
from alignlab.train.online import resolve_online, train_online
from alignlab.train.online.batch import RolloutBatch, make_micro_batch, rollout_files
from alignlab.train.online.rollout import token_pass
from test_online_train import PROMPTS, expected_reward, low_id_share, structured_policy_dir  # noqa: F401


def test_inpo_pair_losses_by_hand():
    pa, pb, qa, qb, ra, rb = (torch.tensor([v]) for v in (-2.0, -3.0, -2.5, -2.5, -1.0, -2.0))
    # beta 0.5, eta 1: h = (-2 + 3) - 0.5 * 0 - 0.5 * (-1 + 2) = 0.5
    hard = inpo_pair_losses(pa, pb, qa, qb, ra, rb, torch.tensor([1.0]), beta=0.5, eta=1.0)
    assert hard.item() == pytest.approx((0.5 - 0.5) ** 2)
    lost = inpo_pair_losses(pa, pb, qa, qb, ra, rb, torch.tensor([0.0]), beta=0.5, eta=1.0)
    assert lost.item() == pytest.approx((-0.5 - 0.5) ** 2)
    soft = inpo_pair_losses(pa, pb, qa, qb, ra, rb, torch.tensor([0.25]), beta=0.5, eta=1.0)
    assert soft.item() == pytest.approx(0.25 * 0.0 + 0.75 * 1.0)
    # a hard label is inpo_loss on the (winner, loser) order
    ref, _ = inpo_loss(pb, pa, qb, qa, rb, ra, beta=0.5, eta=1.0)
    assert lost.item() == pytest.approx(ref.item())
    with pytest.raises(ValueError, match="eta \\* beta <= 1"):
        inpo_pair_losses(pa, pb, qa, qb, ra, rb, torch.tensor([1.0]), beta=0.5, eta=3.0)


def train(tmp_path, policy_dir, tokenizer, name="inpo", **overrides):
    flags = dict(model=str(policy_dir), output_dir=str(tmp_path / name), iterations=2, prompts_per_step=4,
                 max_new_tokens=8, batch_size=8, learning_rate=1e-2, lr_schedule="constant", warmup_ratio=0.0,
                 progress=False, eval_prompts=2, seed=0)
    flags.update(overrides)
    cfg = resolve_online("inpo", flags=flags)
    summary = train_online(cfg, train_rows=PROMPTS, eval_rows=PROMPTS[:2], rewards=low_id_share(tokenizer)).summary
    return cfg, summary, [RolloutBatch.load(p) for p in rollout_files(tmp_path / name / "rollouts")]


def test_inpo_settings():
    cfg = resolve_online("inpo", flags={})
    assert (cfg.pair_rule, cfg.soft_labels, cfg.eta, cfg.kl_coef) == ("random", True, 1.0, 0.1)
    with pytest.raises(ConfigError, match="0 < eta \\* kl_coef <= 1"):
        resolve_online("inpo", flags=dict(eta=20.0)).validate()
    with pytest.raises(ConfigError, match="preference_loss is set but inpo training does not read it"):
        resolve_online("inpo", flags=dict(preference_loss="ipo")).validate()
    with pytest.raises(ConfigError, match="eta is set but online-dpo training does not read it"):
        resolve_online("online-dpo", flags=dict(eta=1.0)).validate()


def test_pi_t_is_the_sampling_policy_and_the_reference_the_initial_model(tmp_path, tiny_policy_dir, smol_tokenizer):
    cfg, _, batches = train(tmp_path, tiny_policy_dir, smol_tokenizer)
    second = batches[1]  # sampled by the policy after iteration 0's updates
    rows = list(range(len(second)))
    initial = load_policy(str(tiny_policy_dir))
    initial_logps, _ = token_pass(PolicyValue(initial, 0), second, rows, 0, 8)
    assert torch.allclose(second.ref_logps, initial_logps, atol=1e-5)  # the fixed reference
    assert (second.old_logps - initial_logps).abs().max() > 1e-3  # pi_t is not the initial model
    # the loss the trainer takes is INPO's, with pi_t = old_logps and pi_ref = ref_logps
    from alignlab.train.online.trainer import OnlineAlgorithm

    fake = type("A", (), {})()
    fake.cfg, fake.ctl = cfg, type("C", (), {"kl_coef": cfg.kl_coef})()
    mb = make_micro_batch(second, second.keep.nonzero()[:, 0].tolist(), 0)
    out, _ = PolicyValue(initial, 0)(mb.packed)
    logps, mask = mb.to_bt(out.logps), mb.mask
    loss, _ = OnlineAlgorithm._preference_loss(fake, logps, mask, mb, {})
    seq = lambda x: (x * mask).sum(-1)  # noqa: E731
    p, q, r = seq(logps), seq(mb.old_logps), seq(mb.ref_logps)
    h = (p[0::2] - p[1::2]) - (1 - 0.1) * (q[0::2] - q[1::2]) - 0.1 * (r[0::2] - r[1::2])
    target = mb.rewards[0::2]
    assert torch.allclose(loss, target * (h - 0.5) ** 2 + (1 - target) * (-h - 0.5) ** 2, atol=1e-4)
    assert ((target > 0) & (target < 1)).any()  # soft labels: the judge's probabilities


def test_inpo_raises_the_judged_reward_on_the_tiny_task(tmp_path, structured_policy_dir, smol_tokenizer):
    _, summary, _ = train(tmp_path, structured_policy_dir, smol_tokenizer, iterations=8, samples_per_prompt=4,
                          judge_temperature=0.1, prompts_per_step=6, batch_size=12)
    assert expected_reward(summary["final_dir"], smol_tokenizer) > expected_reward(structured_policy_dir,
                                                                                   smol_tokenizer) + 0.05
