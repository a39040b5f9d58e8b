"""The pretraining/SFT mixing term (PPO-ptx): the demonstrations file, its loss, and its place in
the online loss (exact weight, resume-safe sampling, it raises the demonstrations' likelihood)."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.config import ConfigError
from alignlab.data.demonstrations import encode_demonstrations, read_demonstrations
from alignlab.data.errors import DataError
from alignlab.rewards.base import FunctionReward
from alignlab.train.online import resolve_online, train_online
from alignlab.train.online.ptx import ptx_nll

PROMPTS = [{"prompt": [{"role": "user", "content": f"Tell me about {w}."}]} for w in ["cats", "rain", "tea", "maps"]]


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_ptx_nll_is_the_token_mean_negative_log_likelihood():
    # tokens with log-probs -1, -2, -3: L = (1 + 2 + 3) / 3 = 2
    assert float(ptx_nll(torch.tensor([-1.0, -2.0, -3.0]))) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no scored tokens"):
        ptx_nll(torch.tensor([]))


def test_demonstrations_read_sft_and_plain_text_and_name_the_bad_line(tmp_path, smol_tokenizer):
    good = write(tmp_path / "d.jsonl", [{"prompt": "Hi?", "response": "Hello there."}, "",
                                        {"prompt": [{"role": "user", "content": "Yo"}], "completion": "Hey."},
                                        {"text": "Once upon a time there was a cat."}])
    demos = read_demonstrations(good)
    assert [d.text for d in demos] == ["Hello there.", "Hey.", "Once upon a time there was a cat."]
    assert demos[2].prompt is None and demos[1].location == "line 3"
    enc = encode_demonstrations(smol_tokenizer, demos, max_length=512)
    prefix, scored = enc.blocks[0]
    assert smol_tokenizer.decode(scored).startswith("Hello there.") and "Hi?" in smol_tokenizer.decode(prefix)
    assert enc.blocks[2][0] == [] and enc.report() == {"demonstrations": 3, "truncated": 0, "dropped": 0}
    for rows, match in [(["{oops"], "line 1: not valid JSON"), (["[1, 2]"], "line 1: expected a JSON object, got list"),
                        ([{"prompt": "Hi?"}], "line 1, field 'response'"),
                        ([{"prompt": "Hi?", "response": "ok"}, {"text": "  "}], "line 2, field 'text'"),
                        ([{"answer": "4"}], "line 1: expected a 'prompt'"),
                        ([{"prompt": "", "response": "x"}], "line 1, field 'prompt'")]:
        with pytest.raises(DataError, match=match):
            read_demonstrations(write(tmp_path / "bad.jsonl", rows))


def test_overlong_demonstrations_error_or_are_counted(tmp_path, smol_tokenizer):
    long = "word " * 200
    demos = read_demonstrations(write(tmp_path / "d.jsonl", [{"prompt": "Hi?", "response": "Short."},
                                                             {"prompt": "Hi?", "response": long}]))
    with pytest.raises(DataError, match="line 2: .* over max_length 64"):
        encode_demonstrations(smol_tokenizer, demos, max_length=64)
    cut = encode_demonstrations(smol_tokenizer, demos, max_length=64, truncation="truncate")
    assert cut.report() == {"demonstrations": 2, "truncated": 1, "dropped": 0}
    assert sum(map(len, cut.blocks[1])) == 64
    dropped = encode_demonstrations(smol_tokenizer, demos, max_length=64, truncation="drop")
    assert dropped.report() == {"demonstrations": 1, "truncated": 0, "dropped": 1}


def test_ptx_settings_are_checked_and_ppo_max_turns_the_term_on(capsys):
    from alignlab.train.online.trainer import _ptx_mixer

    with pytest.raises(ConfigError, match="ptx_coef is 0"):
        resolve_online("ppo", flags={"ptx_data": "demos.jsonl"})
    preset = resolve_online("ppo", flags={"preset": "ppo_max"})
    assert preset.ptx_coef == 1.0 and resolve_online("ppo").ptx_coef == 0.0
    # gamma without data (the preset alone) trains without the term, and says so
    assert _ptx_mixer(preset, None, 0) is None
    assert "no ptx_data: no pretraining/SFT mixing term" in capsys.readouterr().out


def run(tmp_path, policy_dir, demos, reward, **overrides):
    flags = dict(model=str(policy_dir), output_dir=str(tmp_path), iterations=4, prompts_per_step=4, max_new_tokens=8,
                 batch_size=8, learning_rate=1e-2, lr_schedule="constant", warmup_ratio=0.0, kl_coef=0.0,
                 progress=False, eval_prompts=2, seed=0, samples_per_prompt=4)
    if demos is not None:  # max_length applies to the demonstrations only
        flags.update(ptx_data=str(demos), ptx_coef=1.0, ptx_batch_size=2, max_length=64)
    flags.update(overrides)
    cfg = resolve_online("grpo", flags=flags)
    return train_online(cfg, train_rows=PROMPTS, eval_rows=PROMPTS[:2], rewards=reward).summary


def test_ptx_enters_the_loss_with_weight_gamma_and_raises_the_demonstrations_likelihood(tmp_path, tiny_policy_dir,
                                                                                     smol_tokenizer):
    demos = write(tmp_path / "demos.jsonl", [{"prompt": p["prompt"], "response": "Meow meow meow."} for p in PROMPTS])
    constant = FunctionReward(lambda texts: [1.0] * len(texts), name="constant", responses_only=True)
    # A constant reward gives every GRPO advantage 0 and the KL weight is 0, so the loss is the ptx
    # term alone: the logged loss must be exactly gamma x the logged (token-weighted) ptx NLL.
    s = run(tmp_path / "ptx", tiny_policy_dir, demos, constant, ptx_coef=2.0)
    steps = [json.loads(line) for line in open(f"{s['run_dir']}/metrics.jsonl") if '"loss"' in line]
    assert steps and all(r["loss"] == pytest.approx(2.0 * r["ptx_loss"], rel=1e-5) for r in steps)
    assert steps[-1]["ptx_loss"] < steps[0]["ptx_loss"] - 0.5  # the demonstrations became likelier
    assert s["ptx_data"] == {"demonstrations": 4, "truncated": 0, "dropped": 0}
    # without the term the same run does not move at all (zero advantages, no KL): nothing to learn
    off = run(tmp_path / "off", tiny_policy_dir, None, constant)
    assert all(json.loads(line).get("loss", 0.0) == 0.0 for line in open(f"{off['run_dir']}/metrics.jsonl"))


def test_ptx_batches_depend_only_on_seed_iteration_and_micro_batch(tmp_path, smol_tokenizer):
    from types import SimpleNamespace

    from alignlab.train.online.ptx import PtxMixer

    demos = write(tmp_path / "d.jsonl", [{"text": f"Demonstration number {i} is here."} for i in range(10)])
    cfg = SimpleNamespace(ptx_data=str(demos), max_length=64, truncation="error", ptx_coef=1.0, ptx_batch_size=3, seed=0)
    a, b = PtxMixer(cfg, smol_tokenizer, 0), PtxMixer(cfg, smol_tokenizer, 0)
    assert torch.equal(a.batch(2, 1).input_ids, b.batch(2, 1).input_ids)  # what a resumed run draws again
    assert not torch.equal(a.batch(2, 1).input_ids, a.batch(2, 0).input_ids)
    assert a.batch(0, 0).num_sequences == 3
