"""MNPO (multiplayer Nash preference optimization) on the language-model online loop: INPO's
pairs and loss, with the opponent term the equally weighted mean log-probs of the last m
iterates. The loss against mnpo_loss, the wiring (which iterates form the population, that their
snapshots come back on resume), and an improvement on the tiny task."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from alignlab.config import ConfigError
from alignlab.losses.nash import inpo_pair_losses, mnpo_loss
from alignlab.models.load import load_policy
from alignlab.models.policy_value import PolicyValue
from alignlab.train.online import resolve_online, train_online
from alignlab.train.online.batch import RolloutBatch, make_micro_batch, rollout_files
from alignlab.train.online.population import Population
from alignlab.train.online.rollout import token_pass
from test_online_train import PROMPTS, expected_reward, low_id_share, structured_policy_dir  # noqa: F401


def test_the_population_mean_in_inpo_s_loss_is_mnpo_s_loss():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(5, generator=g) for _ in range(4))
    oc, orr = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    lam = torch.full((3,), 1 / 3)
    expected, _ = mnpo_loss(pc, pr, oc, orr, rc, rr, beta=0.1, eta=2.0, opponent_weights=lam)
    got = inpo_pair_losses(pc, pr, oc.mean(-1), orr.mean(-1), rc, rr, torch.ones(5), beta=0.1, eta=2.0)
    assert got.mean().item() == pytest.approx(expected.item(), rel=1e-6)


def test_mnpo_settings():
    cfg = resolve_online("mnpo", flags={})
    assert (cfg.population, cfg.pair_rule, cfg.soft_labels, cfg.eta, cfg.kl_coef) == (3, "random", True, 1.0, 0.1)
    with pytest.raises(ConfigError, match="mnpo needs population >= 1"):
        resolve_online("mnpo", flags=dict(population=0)).validate()
    with pytest.raises(ConfigError, match="population is set but inpo training does not read it"):
        resolve_online("inpo", flags=dict(population=2)).validate()


def test_population_snapshots_come_back_from_the_run_folder(tmp_path):
    model = torch.nn.Linear(2, 2)
    pop = Population(tmp_path / "population", model, 2)
    for it in range(3):
        with torch.no_grad():
            model.weight.fill_(float(it))
        pop.snapshot(it)
    assert sorted(p.name for p in (tmp_path / "population").iterdir()) == ["iter-00001.safetensors",
                                                                           "iter-00002.safetensors"]
    resumed = Population(tmp_path / "population", model, 2)  # a new process: nothing in memory
    with resumed.acting_as(1):
        assert model.weight.eq(1.0).all()
    assert model.weight.eq(2.0).all()  # its own weights are back
    assert resumed.members(2) == [1, 2] and resumed.members(0) == [0]
    with pytest.raises(ValueError, match="snapshot of iteration 0 .* is missing"):
        resumed.weights(0)


def _logps_under(policy_dir, snapshot: dict | None, batch: RolloutBatch) -> torch.Tensor:
    model = load_policy(str(policy_dir))
    if snapshot is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, w in snapshot.items():
                params[name].copy_(w)
    logps, _ = token_pass(PolicyValue(model, 0), batch, list(range(len(batch))), 0, 8)
    return logps


def train_three_iterations(tmp_path, policy_dir, tokenizer, method: str, **overrides):
    """`method` for 3 iterations on the tiny task (full fine-tuning); its config and rollouts."""
    flags = dict(model=str(policy_dir), output_dir=str(tmp_path / method), iterations=3, prompts_per_step=4,
                 max_new_tokens=8, batch_size=8, learning_rate=1e-2, lr_schedule="constant", warmup_ratio=0.0,
                 progress=False, eval_prompts=2, seed=0)
    cfg = resolve_online(method, flags={**flags, **overrides})
    train_online(cfg, train_rows=PROMPTS, eval_rows=PROMPTS[:2], rewards=low_id_share(tokenizer))
    return cfg, [RolloutBatch.load(p) for p in rollout_files(tmp_path / method / "rollouts")]


def test_the_loss_plays_the_mean_of_the_last_m_iterates(tmp_path, tiny_policy_dir, smol_tokenizer):
    cfg, batches = train_three_iterations(tmp_path, tiny_policy_dir, smol_tokenizer, "mnpo", population=2)
    folder = tmp_path / "mnpo" / "population"
    assert sorted(p.name for p in folder.iterdir()) == ["iter-00001.safetensors", "iter-00002.safetensors"]
    snap1, snap2 = (load_file(str(folder / f"iter-0000{i}.safetensors")) for i in (1, 2))
    assert max((snap2[k] - snap1[k]).abs().max() for k in snap1) > 1e-4  # the iterates differ
    # iteration 0: a population of one, pi_0 = the sampler
    torch.testing.assert_close(batches[0].population_logps, batches[0].old_logps)
    # iteration 1: pi_0 (the initial model) and pi_1; iteration 2: pi_1 and pi_2 (pi_0 has left)
    for batch, members in ((batches[1], (None, snap1)), (batches[2], (snap1, snap2))):
        expected = sum(_logps_under(tiny_policy_dir, s, batch) for s in members) / 2
        torch.testing.assert_close(batch.population_logps * batch.mask, expected * batch.mask, atol=1e-4, rtol=0)
        assert ((batch.population_logps - batch.old_logps) * batch.mask).abs().max() > 1e-4
    # the trainer's loss is INPO's with the population mean in place of pi_t
    from alignlab.train.online.trainer import OnlineAlgorithm

    last = batches[2]
    fake = type("A", (), {})()
    fake.cfg, fake.ctl = cfg, type("C", (), {"kl_coef": cfg.kl_coef})()
    mb = make_micro_batch(last, last.keep.nonzero()[:, 0].tolist(), 0)
    out, _ = PolicyValue(load_policy(str(tiny_policy_dir)), 0)(mb.packed)
    logps, mask = mb.to_bt(out.logps), mb.mask
    loss, _ = OnlineAlgorithm._preference_loss(fake, logps, mask, mb, {})
    seq = lambda x: (x * mask).sum(-1)  # noqa: E731
    expected = inpo_pair_losses(seq(logps)[0::2], seq(logps)[1::2], seq(mb.population_logps)[0::2],
                                seq(mb.population_logps)[1::2], seq(mb.ref_logps)[0::2], seq(mb.ref_logps)[1::2],
                                mb.rewards[0::2], beta=0.1, eta=1.0)
    torch.testing.assert_close(loss, expected)


def test_mnpo_raises_the_judged_reward_on_the_tiny_task(tmp_path, structured_policy_dir, smol_tokenizer):
    # eta 3 (eta beta = 0.3): each step is anchored to the mean of three iterates, older ones
    # included, so it moves less per iteration than INPO's at the same eta
    flags = dict(model=str(structured_policy_dir), output_dir=str(tmp_path / "m"), iterations=8, prompts_per_step=6,
                 samples_per_prompt=4, max_new_tokens=8, batch_size=12, learning_rate=1e-2, lr_schedule="constant",
                 warmup_ratio=0.0, progress=False, eval_prompts=2, seed=0, judge_temperature=0.1, eta=3.0)
    summary = train_online(resolve_online("mnpo", flags=flags), train_rows=PROMPTS, eval_rows=PROMPTS[:2],
                           rewards=low_id_share(smol_tokenizer)).summary
    after, before = expected_reward(summary["final_dir"], smol_tokenizer), expected_reward(structured_policy_dir,
                                                                                         smol_tokenizer)
    assert after > before + 0.05
