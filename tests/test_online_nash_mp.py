"""Nash-MP (Nash mirror prox) on the language-model online loop: iterations alternate between
half and full proximal steps anchored at pi_k (the policy at the half step's start), with
self-play win rates as the reward and (1/eta) KL(pi || pi_k) in the loss. The wiring (which
weights are the anchor on each step, what the loss adds) and the settings."""

from __future__ import annotations

import pytest
import torch

from alignlab.config import ConfigError
from alignlab.losses.policy import kl_estimate
from alignlab.models.load import load_policy
from alignlab.models.policy_value import PolicyValue
from alignlab.train.online import resolve_online
from alignlab.train.online.batch import make_micro_batch
from alignlab.train.online.rollout import token_pass
from alignlab.train.online.trainer import OnlineAlgorithm
from test_online_mnpo import train_three_iterations


def test_nash_mp_settings():
    cfg = resolve_online("nash-mp", flags={})
    assert (cfg.samples_per_prompt, cfg.kl_mode, cfg.kl_estimator, cfg.kl_coef, cfg.eta) == (4, "loss", "k3", 0.1, 1.0)
    assert cfg.spec.self_play and cfg.spec.mirror_prox and cfg.spec.estimator == "rloo"
    with pytest.raises(ConfigError, match="nash-mp needs eta .* > 0"):
        resolve_online("nash-mp", flags=dict(eta=-1.0)).validate()
    with pytest.raises(ConfigError, match="eta is set but spo training does not read it"):
        resolve_online("spo", flags=dict(eta=1.0)).validate()


def test_the_anchor_is_pi_k_on_the_half_and_the_full_step(tmp_path, tiny_policy_dir, smol_tokenizer):
    cfg, (b0, b1, b2) = train_three_iterations(tmp_path, tiny_policy_dir, smol_tokenizer, "nash-mp", eta=0.5,
                                               batch_size=16)
    # half steps (0, 2): the anchor is the policy that sampled; iteration 0's kept weights left with it
    for b in (b0, b2):
        assert b.metrics["mirror_prox/half_step"] == 1.0
        torch.testing.assert_close(b.anchor_logps, b.old_logps)
    assert [p.name for p in (tmp_path / "nash-mp" / "anchors").iterdir()] == ["iter-00002.safetensors"]
    # full step (1): sampled by pi_{k+1/2}, anchored at pi_0, the initial model
    assert b1.metrics["mirror_prox/half_step"] == 0.0
    initial, _ = token_pass(PolicyValue(load_policy(str(tiny_policy_dir)), 0), b1, list(range(len(b1))), 0, 8)
    torch.testing.assert_close(b1.anchor_logps * b1.mask, initial * b1.mask, atol=1e-4, rtol=0)
    assert ((b1.old_logps - initial) * b1.mask).abs().max() > 1e-3  # pi_{k+1/2} is not the anchor
    # the rewards are self-play win rates: each group's average 1/2
    assert torch.allclose(b1.rewards.reshape(-1, 4).mean(-1), torch.full((4,), 0.5), atol=1e-6)

    # the loss adds (1/eta) k3(pi || anchor) per token: move the anchor, and the loss moves by exactly that
    scorer = PolicyValue(load_policy(str(tiny_policy_dir)), 0)
    fake = type("A", (), {})()
    fake.cfg, fake.scorer, fake.ctl = cfg, scorer, type("C", (), {"kl_coef": cfg.kl_coef})()
    fake._per_sequence = lambda token_loss, mask: OnlineAlgorithm._per_sequence(fake, token_loss, mask)
    fake._preference_loss = None
    mb = make_micro_batch(b1, list(range(8)), 0)
    with torch.no_grad():
        base, metrics = OnlineAlgorithm._rl_loss(fake, scorer, mb)
        out, _ = scorer(mb.packed)
        logps = mb.to_bt(out.logps)
        shifted_anchor = mb.anchor_logps + 0.3 * torch.arange(mb.mask.shape[1])
        expected = ((kl_estimate(logps, shifted_anchor, "k3") - kl_estimate(logps, mb.anchor_logps, "k3"))
                    * mb.mask).sum(-1) / 0.5
        mb.anchor_logps = shifted_anchor
        moved, _ = OnlineAlgorithm._rl_loss(fake, scorer, mb)
    assert "kl_to_anchor" in metrics
    torch.testing.assert_close(moved - base, expected, atol=1e-4, rtol=1e-4)
    assert expected.abs().max() > 0.1
