"""Rejection-sampling fine-tuning (RAFT, SuperHF) wired as their papers say: each iteration keeps
the best of each prompt's samples, writes them as a dataset, and fine-tunes on exactly those
(SuperHF adds a KL prior on the same tokens)."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from alignlab.config import ConfigError
from alignlab.data.demonstrations import read_demonstrations
from alignlab.losses.policy import kl_estimate
from alignlab.train.online import resolve_online
from alignlab.train.online.trainer import OnlineAlgorithm
from test_online_wiring import recording_reward, train


@pytest.mark.parametrize("method", ["raft", "superhf"])
def test_each_iteration_keeps_the_best_sample_per_prompt_and_writes_it(tmp_path, tiny_policy_dir, smol_tokenizer,
                                                                       method):
    calls: list = []
    summary, batches = train(tmp_path, tiny_policy_dir, method, recording_reward(smol_tokenizer, calls), iterations=2,
                             **({"kl_coef": 0.35} if method == "superhf" else {}))
    run_dir = tmp_path / method
    assert len(batches) == 2
    for batch in batches:
        groups = batch.rewards.reshape(-1, 4)
        kept = batch.keep.reshape(-1, 4)
        assert (kept.sum(-1) == 1).all()  # one selection per prompt: the first of the highest reward
        assert torch.equal(kept.float().argmax(-1), groups.argmax(-1))
        rows = [json.loads(line) for line in open(run_dir / "selections" / f"iter-{batch.iteration:05d}.jsonl")]
        chosen = batch.keep.nonzero()[:, 0].tolist()
        assert [r["response"] for r in rows] == [batch.texts[i] for i in chosen]
        assert [r["reward"] for r in rows] == pytest.approx(groups.max(-1).values.tolist())
        # the selections are a demonstrations file (train sft, ptx_data)
        demos = read_demonstrations(run_dir / "selections" / f"iter-{batch.iteration:05d}.jsonl")
        assert len(demos) == len(chosen)
        # the reference pass runs only where the KL prior is on
        assert (batch.ref_logps is not None) == (method == "superhf")
    assert summary["steps"] > 0


def test_supervised_loss_is_nll_plus_the_kl_prior_by_hand():
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.3, -1.7, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    kl = kl_estimate(logps, ref, "k3")
    fake = SimpleNamespace(ctl=SimpleNamespace(kl_coef=0.5), cfg=SimpleNamespace(loss_reduction="token_mean"))
    fake._per_sequence = lambda token_loss, m: OnlineAlgorithm._per_sequence(fake, token_loss, m)
    per_seq, metrics = OnlineAlgorithm._supervised_loss(fake, logps, mask, kl, {})

    def k3(lp, lr):  # exp(r) - r - 1 with r = log pi_ref - log pi
        import math
        r = lr - lp
        return math.exp(r) - r - 1

    row0 = (1.0 + 2.0 + 0.5) + 0.5 * (k3(-1.0, -1.5) + k3(-2.0, -1.0) + k3(-0.5, -0.5))
    row1 = (0.3 + 0.7) + 0.5 * (k3(-0.3, -0.3) + k3(-0.7, -1.7))
    assert per_seq.tolist() == pytest.approx([row0, row1], abs=1e-6)
    assert metrics["sft_loss"].item() == pytest.approx((3.5 + 1.0) / 5)
    fake.ctl.kl_coef = 0.0  # RAFT: the NLL alone
    per_seq, _ = OnlineAlgorithm._supervised_loss(fake, logps, mask, kl, {})
    assert per_seq.tolist() == pytest.approx([3.5, 1.0])


def test_selection_settings_are_checked():
    with pytest.raises(ConfigError, match="policy_filter must be best_of_n"):
        resolve_online("raft", flags={"policy_filter": "none"})
    with pytest.raises(ConfigError, match="kl_mode loss"):
        resolve_online("superhf", flags={"kl_mode": "reward"})
    with pytest.raises(ConfigError, match="clip_low is set but raft"):
        resolve_online("raft", flags={"clip_low": 0.1})
    raft, superhf = resolve_online("raft"), resolve_online("superhf")
    assert (raft.policy_filter, raft.kl_coef, raft.samples_per_prompt) == ("best_of_n", 0.0, 4)
    assert (superhf.kl_coef, superhf.kl_mode, superhf.kl_estimator) == (0.35, "loss", "k3")


def test_cli_dry_run_names_the_method_defaults(tmp_path, tiny_policy_dir):
    out = subprocess.run([sys.executable, "-m", "alignlab.cli", "train", "superhf", "--model", str(tiny_policy_dir),
                          "--output-dir", str(tmp_path / "run"), "--train-data", "lab:sentiment", "--dry-run"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "superhf default" in out.stdout and "best_of_n" in out.stdout
    assert not (tmp_path / "run").exists()
