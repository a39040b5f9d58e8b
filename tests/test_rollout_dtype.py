"""rollout_dtype bfloat16: a bf16 copy of the current policy samples, and the old log-probs in the
loss are the fp32 policy's own (never the bf16 sampler's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignlab.config import ConfigError
from alignlab.rewards.base import FunctionReward
from alignlab.rollout.hf import HFGenerator
from alignlab.train.online import resolve_online, rollout as rollout_module, train_online
from alignlab.train.online.batch import RolloutBatch, rollout_files
from helpers import make_tiny_lm

PROMPTS = [{"prompt": f"Say something about topic {i}."} for i in range(4)]


def teacher_forced(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0].float() / temperature
    return torch.log_softmax(logits[len(prompt) - 1 : -1], -1).gather(1, torch.tensor(completion)[:, None])[:, 0]


def test_bf16_copy_samples_and_the_fp32_policy_gives_the_old_logps(tmp_path, tiny_policy_dir, smol_tokenizer,
                                                                    monkeypatch):
    copies, sampled_by = [], []  # per iteration: the fp32 policy's weights, the copy's weights
    real_copy, real_generate = rollout_module.rollout_copy, HFGenerator.generate

    def spy_copy(model, dtype):
        clone = real_copy(model, dtype)
        copies.append(({k: v.detach().clone() for k, v in model.state_dict().items()}, clone))
        return clone

    def spy_generate(self, prompt_ids, params, **kw):
        sampled_by.append(self.model)
        return real_generate(self, prompt_ids, params, **kw)

    monkeypatch.setattr(rollout_module, "rollout_copy", spy_copy)
    monkeypatch.setattr(HFGenerator, "generate", spy_generate)
    cfg = resolve_online("grpo", flags=dict(
        model=str(tiny_policy_dir), output_dir=str(tmp_path), iterations=2, prompts_per_step=4, samples_per_prompt=2,
        max_new_tokens=6, batch_size=8, learning_rate=5e-2, lr_schedule="constant", warmup_ratio=0.0, kl_coef=0.0,
        progress=False, eval_prompts=4, seed=0, temperature=0.7, rollout_dtype="bfloat16"))
    reward = FunctionReward(lambda texts: [len(t) / 10 for t in texts], name="chars", responses_only=True)
    summary = train_online(cfg, train_rows=PROMPTS, eval_rows=PROMPTS[:2], rewards=reward).summary
    assert len(copies) == 2
    assert copies[0][0]["lm_head.weight"].ne(copies[1][0]["lm_head.weight"]).any()  # the policy did change
    run_dir = Path(summary["run_dir"])
    batches = [RolloutBatch.load(f) for f in rollout_files(run_dir / "rollouts")]
    assert len(batches) == 2
    for (weights, clone), batch in zip(copies, batches):
        # the sampler is that iteration's bf16 copy, whose weights are the policy's cast to bf16
        assert clone in sampled_by and next(clone.parameters()).dtype == torch.bfloat16
        clone_state = clone.state_dict()
        for name, w in weights.items():
            assert torch.equal(clone_state[name], w.to(torch.bfloat16)), name
        # the old log-probs are the fp32 policy's, at the sampling temperature
        policy = make_tiny_lm(len(smol_tokenizer))
        policy.load_state_dict(weights)
        for i in range(len(batch)):
            want = teacher_forced(policy.eval(), batch.prompt_ids[i], batch.completion_ids[i], 0.7)
            torch.testing.assert_close(batch.old_logps[i, : len(want)], want, atol=1e-5, rtol=0)
    gaps = [json.loads(line).get("rollout/sampler_logprob_gap")
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(g is not None and g > 1e-4 for g in gaps)  # bf16 sampling log-probs differ: they were replaced


def test_rollout_dtype_must_be_known(tmp_path, tiny_policy_dir):
    with pytest.raises(ConfigError, match="rollout_dtype"):
        resolve_online("grpo", flags=dict(model=str(tiny_policy_dir), output_dir=str(tmp_path), rollout_dtype="fp16"))


def test_rollout_copy_of_a_lora_policy_has_the_adapter_merged_and_leaves_the_policy_alone():
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(make_tiny_lm(64), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter (lora_B starts at zero)
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = policy(x).logits
        with policy.disable_adapter():
            base = policy(x).logits
    clone = rollout_module.rollout_copy(policy, torch.bfloat16)
    assert not hasattr(clone, "peft_config") and next(clone.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        got = clone(x).logits.float()
    assert (want - base).abs().max() > 0.05  # the adapter matters...
    torch.testing.assert_close(got, want, atol=0.02, rtol=0.02)  # ...and the copy carries it
    assert next(policy.parameters()).dtype == torch.float32 and hasattr(policy, "peft_config")
    with torch.no_grad():
        torch.testing.assert_close(policy(x).logits, want)  # the policy still has its adapter, unmerged
