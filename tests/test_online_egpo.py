"""EGPO (extragradient preference optimization) on the language-model online loop: online IPO on
judged pairs of the policy's own samples, one optimizer step per iteration; odd iterations take
the gradient at pi_{t+1/2} (the weights that sampled their pairs) and apply it from pi_t. The
wiring is checked against a hand-run extragradient with the same AdamW."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.config import ConfigError
from alignlab.models.load import load_policy
from alignlab.models.policy_value import PolicyValue
from alignlab.train.online import resolve_online
from alignlab.train.online.batch import make_micro_batch
from alignlab.train.online.trainer import OnlineAlgorithm
from test_online_mnpo import train_three_iterations


def test_egpo_settings():
    cfg = resolve_online("egpo", flags={})
    assert (cfg.preference_loss, cfg.pair_rule, cfg.soft_labels, cfg.kl_coef) == ("ipo", "random", True, 0.1)
    assert cfg.spec.extragradient and cfg.spec.preference
    with pytest.raises(ConfigError, match="egpo's loss is online IPO"):
        resolve_online("egpo", flags=dict(preference_loss="dpo")).validate()
    with pytest.raises(ConfigError, match="grad_accum is set but egpo training does not read it"):
        resolve_online("egpo", flags=dict(grad_accum=2)).validate()


def _gradient(cfg, model, batch) -> list[torch.Tensor]:
    """The gradient of the trainer's loss on the whole rollout (the loop's sum over pairs / pairs)."""
    fake = type("A", (), {})()
    fake.cfg, fake.ctl = cfg, type("C", (), {"kl_coef": cfg.kl_coef})()
    mb = make_micro_batch(batch, batch.keep.nonzero()[:, 0].tolist(), 0)
    out, _ = PolicyValue(model, 0)(mb.packed)
    per_pair, _ = OnlineAlgorithm._preference_loss(fake, mb.to_bt(out.logps), mb.mask, mb, {})
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(per_pair.sum() / len(per_pair), params)


def test_the_full_step_applies_the_look_ahead_gradient_from_pi_t(tmp_path, tiny_policy_dir, smol_tokenizer):
    lr = 1e-2
    cfg, (b0, b1, b2) = train_three_iterations(tmp_path, tiny_policy_dir, smol_tokenizer, "egpo", max_grad_norm=0.0,
                                               learning_rate=lr)
    assert [b.metrics["extragradient/full_step"] for b in (b0, b1, b2)] == [0.0, 1.0, 0.0]
    steps = [json.loads(x) for x in (tmp_path / "egpo" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(steps) == 3  # one optimizer step per iteration
    # by hand: AdamW as the trainer builds it
    model = load_policy(str(tiny_policy_dir))
    params = [p for p in model.parameters() if p.requires_grad]
    theta_0 = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)

    def step(batch, restart=None):
        grads = _gradient(cfg, model, batch)
        if restart is not None:
            with torch.no_grad():
                for p, w in zip(params, restart):
                    p.copy_(w)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()

    def run(restart: bool) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, w in zip(params, theta_0):
                p.copy_(w)
        opt.state.clear()
        step(b0)  # the half step: pi_0 -> pi_1/2
        step(b1, restart=theta_0 if restart else None)  # the gradient at pi_1/2, applied from pi_0
        step(b2)  # the next half step, from pi_1
        return [p.detach().clone() for p in params]

    trained = [p for p in load_policy(str(tmp_path / "egpo" / "final")).parameters() if p.requires_grad]
    # Adam's step is ~lr on every element whatever the gradient's size, so an element whose
    # gradient is near 0 can carry float noise of the loss's summation order: 1% of a step allowed
    for p, q in zip(run(restart=True), trained):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=0)
    plain = run(restart=False)  # plain steps end measurably elsewhere: the check discriminates
    assert max((p - q).abs().max() for p, q in zip(plain, trained)) > 1e-3
