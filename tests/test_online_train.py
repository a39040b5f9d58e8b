"""Online RL trainers end to end on a tiny random policy: every method raises its reward on a
tiny task, and the plumbing holds (exact resume, KL skipped at kl_coef 0, the CLI)."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.rewards.base import FunctionReward
from alignlab.train.online import resolve_online, train_online
from alignlab.train.online.batch import rollout_files
from alignlab.train.online.config import ONLINE_METHODS

WORDS = ["cats", "rain", "tea", "maps", "trains", "bread", "snow", "music", "paint", "boats", "lamps", "owls"]
PROMPTS = [{"prompt": [{"role": "user", "content": f"Tell me about {w}."}]} for w in WORDS]


@pytest.fixture(scope="module")
def structured_policy_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama whose (tied) token embeddings carry one direction u that separates the
    lower half of the vocabulary from the upper half, so moving the hidden state along u shifts
    probability between the halves: a structure a policy can learn in a few steps (with purely
    random embeddings no update generalizes beyond the few tokens sampled)."""
    from helpers import make_tiny_lm

    path = tmp_path_factory.mktemp("structured-policy")
    model = make_tiny_lm(len(smol_tokenizer))
    emb = model.get_input_embeddings().weight  # (V, H), tied with the output layer
    u = torch.nn.functional.normalize(torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(1)), dim=0)
    sign = torch.where(torch.arange(emb.shape[0]) < emb.shape[0] // 2, 1.0, -1.0)
    with torch.no_grad():
        emb += 0.05 * sign[:, None] * u
    model.save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


def low_id_share(tokenizer):
    """Tiny task: the share of a response's tokens in the lower half of the vocabulary (a random
    policy scores ~0.5; a policy can learn it through its output layer within a few steps)."""
    half = len(tokenizer) // 2

    def reward(texts):
        out = []
        for t in texts:
            ids = tokenizer(t, add_special_tokens=False)["input_ids"]
            out.append(sum(i < half for i in ids) / max(len(ids), 1))
        return out

    return FunctionReward(reward, name="low_ids", responses_only=True)


_EXPECTED: dict = {}


def expected_reward(model_dir, tokenizer, n: int = 32) -> float:
    """The policy's expected tiny-task reward, estimated from n samples of every prompt with a
    fixed seed (384 completions: a standard error near 0.01, against ~0.05 for one rollout's mean)."""
    from alignlab.data.tokenize import encode_prompt
    from alignlab.models.load import load_policy
    from alignlab.rollout.base import SamplingParams
    from alignlab.rollout.hf import HFGenerator

    if (str(model_dir), n) not in _EXPECTED:  # the untrained policy is measured once for every method
        model = load_policy(str(model_dir)).eval()
        ids = [encode_prompt(tokenizer, r["prompt"]) for r in PROMPTS]
        out = HFGenerator(model, tokenizer, batch_size=128).generate(ids, SamplingParams(n=n, max_new_tokens=8, seed=123))
        _EXPECTED[str(model_dir), n] = low_id_share(tokenizer).score([None] * len(out.texts), out.texts).mean().item()
    return _EXPECTED[str(model_dir), n]


def run(tmp_path, policy_dir, smol_tokenizer, method, **overrides):
    flags = dict(model=str(policy_dir), output_dir=str(tmp_path / method), iterations=8, prompts_per_step=4,
                 max_new_tokens=8, batch_size=8, learning_rate=1e-2, lr_schedule="constant", warmup_ratio=0.0,
                 kl_coef=0.0, progress=False, eval_prompts=4, seed=0, samples_per_prompt=4)
    if method == "ppo_lagrangian":
        flags.update(cost="python:unused:unused")  # replaced by the in-memory cost below
    if ONLINE_METHODS[method].preference:
        flags.update(kl_coef=0.1)  # online DPO's beta
    if method == "mnpo":
        flags.update(eta=3.0)  # its step is anchored to the mean of older iterates (test_online_mnpo.py)
    if method == "nash-mp":  # a weak proximal term: the win rates judged at temperature 1 differ from 1/2 by
        flags.update(eta=10.0)  # ~0.05, which KL(pi || pi_k) at 1/eta = 1 holds back (0.563 -> 0.542 measured)
    flags.update(overrides)
    cfg = resolve_online(method, flags=flags)
    cost = FunctionReward(lambda texts: [len(t) / 40 for t in texts], name="chars", responses_only=True)
    return train_online(cfg, train_rows=PROMPTS, eval_rows=PROMPTS[:4], rewards=low_id_share(smol_tokenizer),
                        cost=cost if method == "ppo_lagrangian" else None).summary


@pytest.mark.parametrize("method", sorted(m for m in ONLINE_METHODS if m != "ppo_lagrangian"))
def test_every_online_method_raises_its_reward_on_a_tiny_task(tmp_path, structured_policy_dir, smol_tokenizer, method):
    summary = run(tmp_path, structured_policy_dir, smol_tokenizer, method)
    before, after = expected_reward(structured_policy_dir, smol_tokenizer), expected_reward(summary["final_dir"],
                                                                                          smol_tokenizer)
    assert 0.45 < before < 0.65  # a random policy
    assert after > before + 0.05, (before, after)
    assert summary["iterations"] == 8 and summary["steps"] > 0
    rows = [json.loads(line) for line in open(f"{summary['run_dir']}/metrics.jsonl")]
    logged = {k for r in rows for k in r}
    spec = ONLINE_METHODS[method]
    objective = ("sft_loss",) if spec.supervised else ("policy_loss",) if spec.preference else ("clip_fraction",
                                                                                                 "policy_loss")
    for key in ("rollout/reward/mean", "rollout/response_length", "rollout/truncated_share", "rollout/time/generation",
                "rollout/generated_tokens_per_second", "entropy", "step_seconds", *objective):
        assert key in logged, key
    if method == "ppo":
        assert {"value_loss", "explained_variance", "value_clip_fraction"} <= logged
    if method == "grpo":
        assert "rollout/zero_advantage_groups" in logged


def test_packed_group_logps_land_on_the_right_tokens(tiny_policy_dir):
    # A micro-batch packs each prompt once with its n completions; the per-token log-probs it
    # returns in (b, T) layout must equal a plain forward of prompt + completion, row by row.
    from alignlab.models.load import load_policy
    from alignlab.models.policy_value import PolicyValue
    from alignlab.train.online.batch import RolloutBatch, make_micro_batch, pad_tokens

    model = load_policy(str(tiny_policy_dir)).eval()
    prompts = [[5, 6, 7], [8, 9]]
    completions = [[10, 11], [12, 13, 14, 15], [16], [17, 18, 19]]  # n = 2: rows 0-1 prompt 0, rows 2-3 prompt 1
    batch = RolloutBatch(0, 2, [None] * 4, [prompts[0], prompts[0], prompts[1], prompts[1]], completions, [""] * 4,
                         [True] * 4, mask=pad_tokens([[1.0] * len(c) for c in completions]),
                         old_logps=torch.zeros(4, 4), rewards=torch.zeros(4))
    scorer = PolicyValue(model, critics=1, temperature=0.7)
    mb = make_micro_batch(batch, [3, 0, 1, 2], pad_token_id=0)
    with torch.no_grad():
        out, values = scorer(mb.packed)
        got = mb.to_bt(out.logps)
        for local, row in enumerate([3, 0, 1, 2]):
            ids = torch.tensor([batch.prompt_ids[row] + completions[row]])
            logits = model(ids).logits[0].float() / 0.7
            P, T = len(batch.prompt_ids[row]), len(completions[row])
            want = torch.log_softmax(logits[P - 1 : P - 1 + T], -1).gather(1, torch.tensor(completions[row])[:, None])[:, 0]
            assert torch.allclose(got[local, :T], want, atol=1e-5)
            assert (got[local, T:] == 0).all()
    assert mb.to_bt(values).shape == (4, 4, 1)


def test_accumulated_micro_batches_give_the_big_batch_gradient(tmp_path, tiny_policy_dir, smol_tokenizer):
    # token_mean over a window of 2 micro-batches of 8 == one micro-batch of 16: same first-step update
    a = run(tmp_path / "a", tiny_policy_dir, smol_tokenizer, "grpo", iterations=1, batch_size=16, grad_accum=1)
    b = run(tmp_path / "b", tiny_policy_dir, smol_tokenizer, "grpo", iterations=1, batch_size=8, grad_accum=2)
    from safetensors.torch import load_file

    wa = load_file(f"{a['final_dir']}/model.safetensors")
    wb = load_file(f"{b['final_dir']}/model.safetensors")
    assert a["steps"] == b["steps"] == 1
    # equal up to float rounding (summation order differs between one batch of 16 and two of 8; 2.6e-6 seen on one CPU)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    assert any(float((wa[k] - load_file(f"{tiny_policy_dir}/model.safetensors")[k]).abs().max()) > 1e-4 for k in wa)


def test_resume_continues_on_the_same_rollouts_and_ends_at_the_same_weights(tmp_path, tiny_policy_dir, smol_tokenizer):
    from safetensors.torch import load_file

    kw = dict(iterations=3, save_every=2, kl_coef=0.05)
    full = run(tmp_path / "full", tiny_policy_dir, smol_tokenizer, "rloo", **kw)
    part = run(tmp_path / "part", tiny_policy_dir, smol_tokenizer, "rloo", **kw, max_steps=3)  # stops mid-iteration 1
    assert part["steps"] == 3
    resumed = run(tmp_path / "part", tiny_policy_dir, smol_tokenizer, "rloo", **kw, resume="latest")
    assert resumed["steps"] == full["steps"] == 6
    wf, wr = load_file(f"{full['final_dir']}/model.safetensors"), load_file(f"{resumed['final_dir']}/model.safetensors")
    assert max(float((wf[k] - wr[k]).abs().max()) for k in wf) < 1e-6


@pytest.mark.parametrize("method,stop", [("mnpo", 2), ("nash-mp", 2), ("egpo", 1)])
def test_resume_rebuilds_the_past_iterates_from_the_run_folder(tmp_path, tiny_policy_dir, smol_tokenizer, method, stop):
    # MNPO's population, Nash-MP's anchor and EGPO's pi_t live in memory and in the run folder: a
    # resumed process starts with nothing in memory and must read them back to end at the same weights
    # (`stop` ends an iteration whose successor's rollout needs a snapshot kept before the stop)
    from safetensors.torch import load_file

    kw = dict(iterations=4, save_every=1)
    full = run(tmp_path / "full", tiny_policy_dir, smol_tokenizer, method, **kw)
    part = run(tmp_path / "part", tiny_policy_dir, smol_tokenizer, method, **kw, max_steps=stop)
    assert part["steps"] == stop
    resumed = run(tmp_path / "part", tiny_policy_dir, smol_tokenizer, method, **kw, resume="latest")
    assert resumed["steps"] == full["steps"]
    wf, wr = load_file(f"{full['final_dir']}/model.safetensors"), load_file(f"{resumed['final_dir']}/model.safetensors")
    assert max(float((wf[k] - wr[k]).abs().max()) for k in wf) < 1e-6


def test_kl_coef_zero_skips_the_reference_pass(tmp_path, tiny_policy_dir, smol_tokenizer):
    from alignlab.train.online.batch import RolloutBatch

    s0 = run(tmp_path / "k0", tiny_policy_dir, smol_tokenizer, "grpo", iterations=1, kl_coef=0.0)
    s1 = run(tmp_path / "k1", tiny_policy_dir, smol_tokenizer, "grpo", iterations=1, kl_coef=0.1)
    b0 = RolloutBatch.load(rollout_files(tmp_path / "k0" / "grpo" / "rollouts")[0])
    b1 = RolloutBatch.load(rollout_files(tmp_path / "k1" / "grpo" / "rollouts")[0])
    assert b0.ref_logps is None and b1.ref_logps is not None
    # a fresh policy is its own reference: the KL starts at 0 (sampling log-probs == reference log-probs)
    assert torch.allclose((b1.old_logps - b1.ref_logps) * b1.mask, torch.zeros_like(b1.mask), atol=1e-4)
    assert s0["steps"] == s1["steps"]


def test_ppo_lagrangian_multiplier_follows_the_cost(tmp_path, tiny_policy_dir, smol_tokenizer):
    from alignlab.train.online.batch import RolloutBatch

    def multipliers(threshold):
        out = tmp_path / f"t{threshold}"
        run(out, tiny_policy_dir, smol_tokenizer, "ppo_lagrangian", iterations=3, cost_threshold=threshold,
            lagrange_init=1.0, lagrange_lr=0.5)
        return [RolloutBatch.load(p).controller["lagrange"] for p in rollout_files(out / "ppo_lagrangian" / "rollouts")]

    high = multipliers(-1.0)  # every cost (chars / 40 >= 0) exceeds it: lambda rises
    low = multipliers(100.0)  # never reached: lambda falls to 0
    assert high[0] > 1.0 and high == sorted(high) and high[-1] > high[0]
    assert low[0] < 1.0 and low[-1] == 0.0


def test_grpo_with_lora_raises_its_reward_and_keeps_the_base_weights(tmp_path, structured_policy_dir, smol_tokenizer):
    summary = run(tmp_path, structured_policy_dir, smol_tokenizer, "grpo", lora=True, learning_rate=3e-2, iterations=10,
                  eval_temperature=1.0)
    assert expected_reward(summary["final_dir"], smol_tokenizer) > expected_reward(structured_policy_dir,
                                                                                   smol_tokenizer) + 0.05
    # the adapter is what trained and what was saved; the LoRA-disabled model is the evaluation reference
    from pathlib import Path

    assert (Path(summary["final_dir"]) / "adapter_model.safetensors").is_file()
    # before training the zero-initialised adapter changes nothing: KL 0 up to float rounding (4.8e-7 seen)
    # after it the policy differs from the reference (the sign of a 4-sample Monte-Carlo estimate is noise)
    assert abs(summary["eval_before"]["kl_to_reference"]) < 1e-5 < abs(summary["final_eval"]["kl_to_reference"])


def test_policy_filter_trains_only_each_groups_extremes_and_par_bounds_the_reward(tmp_path, tiny_policy_dir,
                                                                                 smol_tokenizer):
    from alignlab.train.online.batch import RolloutBatch, micro_batch_rows

    s = run(tmp_path, tiny_policy_dir, smol_tokenizer, "grpo", iterations=1, policy_filter="best_worst",
            par_references=2, kl_coef=0.05)
    batch = RolloutBatch.load(rollout_files(tmp_path / "grpo" / "rollouts")[0])
    keep = batch.keep.reshape(-1, 4)
    assert keep.sum(-1).tolist() == [2] * 4  # best and worst of each group of 4
    rows = sorted(r for mb in micro_batch_rows(batch, batch_size=8, epochs=1, seed=0) for r in mb)
    assert rows == batch.keep.nonzero()[:, 0].tolist()  # only the kept rows are trained on
    assert ((batch.rewards > 0) & (batch.rewards < 1)).all()  # PAR: mean sigmoid of margins over the reference's samples
    assert "reward/reference_mean" in batch.metrics and s["steps"] == 1


def test_mask_truncated_leaves_cut_off_completions_out_of_the_loss(tmp_path, tiny_policy_dir, smol_tokenizer):
    from alignlab.train.online.batch import RolloutBatch

    s = run(tmp_path, tiny_policy_dir, smol_tokenizer, "grpo", iterations=1, mask_truncated=True)
    batch = RolloutBatch.load(rollout_files(tmp_path / "grpo" / "rollouts")[0])
    finished = torch.tensor(batch.finished)
    assert (~finished).any()  # a random policy rarely ends within 8 tokens
    assert (batch.mask[~finished] == 0).all() and (batch.mask[finished].sum(-1) > 0).all()
    assert s["steps"] == 2 and torch.isfinite(torch.tensor(s["final_loss"]))


def test_hc_rlhf_trains_under_the_pessimistic_bound_and_runs_the_safety_test(tmp_path, tiny_policy_dir, smol_tokenizer):
    from alignlab.train.online.batch import RolloutBatch

    # cost = characters / 40 is always > 0: a threshold of 100 passes, one of -1 fails
    ok = run(tmp_path / "ok", tiny_policy_dir, smol_tokenizer, "ppo_lagrangian", iterations=1, hc_delta=0.1,
             cost_threshold=100.0, safety_prompts=4)
    bad = run(tmp_path / "bad", tiny_policy_dir, smol_tokenizer, "ppo_lagrangian", iterations=1, hc_delta=0.1,
              cost_threshold=-1.0, safety_prompts=4)
    assert ok["safety_test"]["passed"] and not bad["safety_test"]["passed"]
    for s in (ok, bad):
        t = s["safety_test"]
        assert t["n"] == 4 and t["confidence"] == pytest.approx(0.9) and t["cost_upper_bound"] >= t["cost_mean"]
    batch = RolloutBatch.load(rollout_files(tmp_path / "ok" / "ppo_lagrangian" / "rollouts")[0])
    assert batch.metrics["cost/upper_bound"] > batch.metrics["cost/mean"]  # trained against the pessimistic bound
