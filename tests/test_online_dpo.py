"""Online iterative DPO (RLHF Workflow) with OSP soft targets and XPO / VPO exploration: the loss
terms by hand, and the trainer's wiring (which policy sampled, labels from the judge, ties
dropped and counted, the reference, exact resume, the CLI)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from alignlab.config import ConfigError
from alignlab.losses import get_loss
from alignlab.losses.online_preference import (
    choose_pairs,
    round_robin_probabilities,
    soft_preference_loss,
    vpo_bonus,
    xpo_bonus,
)
from alignlab.models.load import load_policy
from alignlab.train.online import resolve_online, train_online
from alignlab.train.online.batch import RolloutBatch, make_micro_batch, rollout_files
from alignlab.train.online.rollout import token_pass
from test_online_train import PROMPTS, expected_reward, low_id_share, structured_policy_dir  # noqa: F401


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# -- the loss terms by hand ----------------------------------------------------------------------------
def test_soft_preference_dpo_is_the_cross_entropy_by_hand():
    pa, pb, ra, rb = torch.tensor([-3.0]), torch.tensor([-4.0]), torch.tensor([-3.5]), torch.tensor([-3.5])
    # h = (-3 + 3.5) - (-4 + 3.5) = 1; beta = 0.5 -> beta h = 0.5
    loss, _ = soft_preference_loss(get_loss("dpo"), pa, pb, ra, rb, torch.tensor([0.7]), beta=0.5)
    assert loss.item() == pytest.approx(-(0.7 * log_sigmoid(0.5) + 0.3 * log_sigmoid(-0.5)), abs=1e-6)
    hard, _ = soft_preference_loss(get_loss("dpo"), pa, pb, ra, rb, torch.tensor([1.0]), beta=0.5)
    assert hard.item() == pytest.approx(-log_sigmoid(0.5), abs=1e-6)
    flipped, _ = soft_preference_loss(get_loss("dpo"), pa, pb, ra, rb, torch.tensor([0.0]), beta=0.5)
    assert flipped.item() == pytest.approx(-log_sigmoid(-0.5), abs=1e-6)
    with pytest.raises(ValueError, match="probabilities"):
        soft_preference_loss(get_loss("dpo"), pa, pb, ra, rb, torch.tensor([1.5]), beta=0.5)


def test_soft_preference_passes_lengths_to_simpo():
    pa, pb = torch.tensor([-2.0]), torch.tensor([-6.0])
    loss, _ = soft_preference_loss(get_loss("simpo"), pa, pb, None, None, torch.tensor([1.0]), beta=2.0,
                                   lengths_a=torch.tensor([2.0]), lengths_b=torch.tensor([3.0]), gamma=0.5)
    # simpo: -log sigmoid(beta * (pa / |a| - pb / |b|) - gamma) = -log sigmoid(2 * (-1 + 2) - 0.5)
    assert loss.item() == pytest.approx(-log_sigmoid(1.5), abs=1e-6)


def test_xpo_and_vpo_terms_by_hand():
    logps, ref = torch.tensor([-10.0, -4.0]), torch.tensor([-9.0, -5.0])
    assert xpo_bonus(logps, alpha=0.01).tolist() == pytest.approx([-0.1, -0.04])
    assert vpo_bonus(logps, ref, alpha=0.01, beta=0.5).tolist() == pytest.approx([0.01 * 0.5 * -1.0, 0.01 * 0.5 * 1.0])


def test_round_robin_and_pair_rules_by_hand():
    calls = []

    def prefer(first, second):  # P(row i > row j) = 0.9 when i < j within the group: row 0 best
        calls.append((first, second))
        return torch.tensor([0.9] * len(first))

    p = round_robin_probabilities(prefer, 3, 2)
    assert calls == [([0, 0, 1, 3, 3, 4], [1, 2, 2, 4, 5, 5])]  # each pair of each group once, one call
    assert torch.allclose(p[0], torch.tensor([[0.5, 0.9, 0.9], [0.1, 0.5, 0.9], [0.1, 0.1, 0.5]]))
    g = torch.Generator().manual_seed(0)
    assert choose_pairs(p, "best_worst", g).tolist() == [[0, 2], [0, 2]]
    best_random = choose_pairs(p, "best_random", g)
    assert (best_random[:, 0] == 0).all() and (best_random[:, 1] != 0).all()
    random = choose_pairs(p, "random", g)
    assert (random[:, 0] != random[:, 1]).all()


# -- the trainer --------------------------------------------------------------------------------------
def train(tmp_path, policy_dir, tokenizer, name="run", judge=None, **overrides):
    flags = dict(model=str(policy_dir), output_dir=str(tmp_path / name), iterations=2, prompts_per_step=4,
                 max_new_tokens=8, batch_size=8, learning_rate=1e-2, lr_schedule="constant", warmup_ratio=0.0,
                 progress=False, eval_prompts=2, seed=0)
    flags.update(overrides)
    cfg = resolve_online("online-dpo", flags=flags)
    summary = train_online(cfg, train_rows=PROMPTS, eval_rows=PROMPTS[:2], rewards=low_id_share(tokenizer),
                           judge=judge).summary
    batches = [RolloutBatch.load(p) for p in rollout_files(tmp_path / name / "rollouts")]
    return summary, batches


class RecordingJudge:
    """P(a > b) from a fixed rule on the texts, recording every call; `tie` returns 1/2 for
    every comparison of the listed prompts' responses."""

    name = "recording"

    def __init__(self, tie_words=(), value=None):
        self.calls, self.tie_words, self.value = [], tie_words, value

    def prefer(self, prompts, a, b):
        out = []
        for prompt, x, y in zip(prompts, a, b):
            if any(w in prompt[0]["content"] for w in self.tie_words):
                out.append(0.5)
            else:
                out.append(self.value if self.value is not None else 0.8 if len(x) > len(y) else 0.2)
        self.calls.append((list(prompts), list(a), list(b), torch.tensor(out)))
        return torch.tensor(out)


def test_pairs_follow_the_judge_ties_are_dropped_and_counted(tmp_path, tiny_policy_dir, smol_tokenizer):
    judge = RecordingJudge(tie_words=("cats",))
    summary, batches = train(tmp_path, tiny_policy_dir, smol_tokenizer, judge=judge, iterations=3)
    prompts_seen = [p for b in batches for p in b.prompts[::4]]
    cats = sum("cats" in p[0]["content"] for p in prompts_seen)
    assert cats > 0 and summary["ties_dropped"] == cats
    assert summary["pairs"] == len(prompts_seen) - cats
    for batch in batches:
        kept = batch.keep.nonzero()[:, 0].tolist()
        for a, b in zip(kept[0::2], kept[1::2]):
            assert a // 4 == b // 4  # one prompt's two samples
            longer = len(batch.texts[a]) > len(batch.texts[b])
            assert batch.rewards[a].item() == (1.0 if longer else 0.0)  # hard label: the judge's side
            assert batch.rewards[b].item() == 1.0 - batch.rewards[a].item()
        rows = [json.loads(x) for x in open(tmp_path / "run" / "pairs" / f"iter-{batch.iteration:05d}.jsonl")]
        assert len(rows) == len(kept) // 2
        assert all(len(r["chosen"]) >= len(r["rejected"]) and r["preference"] == pytest.approx(0.8) for r in rows)
    # every pair of a group was judged once per iteration: 6 comparisons for 4 samples, 4 prompts
    assert [len(c[1]) for c in judge.calls] == [24, 24, 24]


def test_soft_labels_pass_the_judges_probability_through(tmp_path, tiny_policy_dir, smol_tokenizer):
    _, batches = train(tmp_path, tiny_policy_dir, smol_tokenizer, judge=RecordingJudge(value=0.7), iterations=1,
                       soft_labels=True)
    kept = batches[0].keep.nonzero()[:, 0]
    assert sorted(set(round(x, 6) for x in batches[0].rewards[kept].tolist())) == [0.3, 0.7]


def test_samples_come_from_the_current_policy_and_the_reference_is_fixed_or_refreshed(tmp_path, tiny_policy_dir,
                                                                                      smol_tokenizer):
    for update in ("fixed", "refresh"):
        _, batches = train(tmp_path, tiny_policy_dir, smol_tokenizer, name=update, reference_update=update)
        second = batches[1]  # sampled after iteration 0's updates
        rows = list(range(len(second)))
        initial = load_policy(str(tiny_policy_dir))
        from alignlab.models.policy_value import PolicyValue

        initial_logps, _ = token_pass(PolicyValue(initial, 0), second, rows, 0, 8)
        # the sampling log-probs are not the initial model's: the current policy sampled
        assert (second.old_logps - initial_logps).abs().max() > 1e-3
        if update == "fixed":
            assert torch.allclose(second.ref_logps, initial_logps, atol=1e-5)
        else:  # the reference is the policy that sampled
            assert torch.allclose(second.ref_logps * second.mask, second.old_logps * second.mask, atol=1e-4)


@pytest.mark.parametrize("exploration", ["xpo", "vpo"])
def test_exploration_pairs_a_policy_sample_with_a_reference_sample(tmp_path, tiny_policy_dir, smol_tokenizer,
                                                                  exploration):
    summary, batches = train(tmp_path, tiny_policy_dir, smol_tokenizer, exploration=exploration,
                             exploration_coef=0.01, iterations=2)
    second = batches[1]
    assert second.n == 2 and second.from_reference.tolist() == [False, True] * 4
    initial = load_policy(str(tiny_policy_dir))
    from alignlab.models.policy_value import PolicyValue

    logps, _ = token_pass(PolicyValue(initial, 0), second, list(range(8)), 0, 8)
    ref_rows = second.from_reference
    # the reference rows were sampled by the initial model, the others by the trained policy
    assert torch.allclose(second.old_logps[ref_rows], logps[ref_rows], atol=1e-5)
    assert (second.old_logps[~ref_rows] - logps[~ref_rows]).abs().max() > 1e-3
    rows = [json.loads(line) for line in open(f"{summary['run_dir']}/metrics.jsonl")]
    assert any("exploration_term" in r for r in rows)


def test_exploration_term_enters_the_loss_on_the_reference_sample(tmp_path, tiny_policy_dir, smol_tokenizer):
    # the loss of one micro-batch with and without the term differs by exactly alpha * log pi(y_ref)
    cfg = resolve_online("online-dpo", flags=dict(model=str(tiny_policy_dir), exploration="xpo",
                                                  exploration_coef=0.5, output_dir=str(tmp_path / "x")))
    _, (batch,) = train(tmp_path, tiny_policy_dir, smol_tokenizer, name="y", exploration="xpo",
                        exploration_coef=0.5, iterations=1)
    from alignlab.models.policy_value import PolicyValue
    from alignlab.train.online.trainer import OnlineAlgorithm

    fake = type("A", (), {})()
    fake.cfg, fake.ctl = cfg, type("C", (), {"kl_coef": cfg.kl_coef})()
    mb = make_micro_batch(batch, batch.keep.nonzero()[:, 0].tolist(), 0)
    model = load_policy(str(tiny_policy_dir))
    out, _ = PolicyValue(model, 0)(mb.packed)
    logps, mask = mb.to_bt(out.logps), mb.mask
    with_term, _ = OnlineAlgorithm._preference_loss(fake, logps, mask, mb, {})
    mb.from_reference = None
    without, _ = OnlineAlgorithm._preference_loss(fake, logps, mask, mb, {})
    seq = (logps * mask).sum(-1)
    explored = batch.from_reference[mb.rows]
    assert torch.allclose(with_term - without, 0.5 * seq[explored], atol=1e-5)


def test_online_dpo_raises_the_rewards_judged_preference(tmp_path, structured_policy_dir, smol_tokenizer):
    summary, _ = train(tmp_path, structured_policy_dir, smol_tokenizer, iterations=8, learning_rate=1e-2)
    assert expected_reward(summary["final_dir"], smol_tokenizer) > expected_reward(structured_policy_dir,
                                                                                   smol_tokenizer) + 0.05


def test_resume_mid_iteration_is_exact(tmp_path, tiny_policy_dir, smol_tokenizer):
    kw = dict(iterations=3, save_every=2, batch_size=4)  # 4 rows = 2 pairs per micro-batch: 2 steps per iteration
    full, _ = train(tmp_path, tiny_policy_dir, smol_tokenizer, name="full", **kw)
    part, _ = train(tmp_path, tiny_policy_dir, smol_tokenizer, name="part", **kw, max_steps=3)
    assert part["steps"] == 3
    resumed, _ = train(tmp_path, tiny_policy_dir, smol_tokenizer, name="part", **kw, resume="latest")
    assert resumed["steps"] == full["steps"] == 6
    wf, wr = load_file(f"{full['final_dir']}/model.safetensors"), load_file(f"{resumed['final_dir']}/model.safetensors")
    assert max(float((wf[k] - wr[k]).abs().max()) for k in wf) < 1e-6


def test_a_judge_returning_nan_is_a_clear_error(tmp_path, tiny_policy_dir, smol_tokenizer):
    with pytest.raises(ValueError, match="preference source 'recording' returned nan"):
        train(tmp_path, tiny_policy_dir, smol_tokenizer, judge=RecordingJudge(value=float("nan")), iterations=1)


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="exploration_coef"):
        resolve_online("online-dpo", flags={"exploration": "xpo"})
    with pytest.raises(ConfigError, match="pairwise loss"):
        resolve_online("online-dpo", flags={"preference_loss": "kto"})
    with pytest.raises(ConfigError, match="judge is set but grpo"):
        resolve_online("grpo", flags={"judge": "lab:sentiment"})
    with pytest.raises(ConfigError, match="policy_filter is set but online-dpo"):
        resolve_online("online-dpo", flags={"policy_filter": "best_worst"})
    assert resolve_online("online-dpo", flags={"exploration": "vpo", "exploration_coef": 0.1}).samples_per_prompt == 1


def test_cli_dry_run_and_a_run(tmp_path, tiny_policy_dir):
    base = [sys.executable, "-m", "alignlab.cli", "train", "online-dpo", "--model", str(tiny_policy_dir),
            "--train-data", "lab:sentiment", "--iterations", "1", "--prompts-per-step", "2", "--max-new-tokens", "4",
            "--judge", "annotator:lab:sentiment", "--eval-prompts", "2", "--progress", "false"]
    dry = subprocess.run(base + ["--output-dir", str(tmp_path / "dry"), "--dry-run"], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "online-dpo default" in dry.stdout and not (tmp_path / "dry").exists()
    run = subprocess.run(base + ["--output-dir", str(tmp_path / "run")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "judged pairs trained on" in run.stdout
    assert (tmp_path / "run" / "pairs" / "iter-00000.jsonl").is_file()


def test_iterations_of_ties_only_train_nothing_and_are_counted(tmp_path, tiny_policy_dir, smol_tokenizer):
    summary, batches = train(tmp_path, tiny_policy_dir, smol_tokenizer, judge=RecordingJudge(value=0.5), iterations=2)
    assert len(batches) == 2  # the run still ends after its iterations, not after a step budget
    assert (summary["pairs"], summary["ties_dropped"], summary["steps"]) == (0, 8, 0)
