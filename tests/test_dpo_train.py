"""The DPO trainer end to end on a tiny random model with the real SmolLM2 tokenizer."""

import json

import pytest
import torch

from alignlab.data.records import PairwiseRecord
from alignlab.train.dpo import DPOConfig, train_dpo

TOPICS = ["cats", "rain", "tea", "maps", "trains", "bread", "snow", "music", "paint", "boats", "lamps", "owls"]


def records(topics):
    return [
        PairwiseRecord(prompt=[{"role": "user", "content": f"Tell me about {t}."}],
                       chosen=f"I love {t}, yes yes yes.", rejected=f"No. {t} no no no no.")
        for t in topics
    ]


def cfg(tmp_path, model_dir, **kw):
    base = dict(model=str(model_dir), output_dir=str(tmp_path / "run"), batch_size=4, epochs=3.0,
                learning_rate=3e-3, warmup_ratio=0.0, beta=0.5, progress=False, max_length=128)
    base.update(kw)
    return DPOConfig(**base)


def test_dpo_moves_the_policy_toward_preferred_responses(tmp_path, tiny_policy_dir):
    session = train_dpo(cfg(tmp_path, tiny_policy_dir), train_records=records(TOPICS[:8]),
                        eval_records=records(TOPICS[8:]))
    evals = session.summary["final_eval"]
    # held-out prompts: the reference margin is 0 by construction, so any accuracy comes from training
    assert evals["rewards/accuracy"] == 1.0
    assert evals["rewards/margins"] > 0.5
    losses = [r["loss"] for r in session.state.history if "loss" in r]
    assert losses[-1] < losses[0] - 0.1
    assert abs(losses[0] - torch.nn.functional.softplus(torch.tensor(0.0)).item()) < 1e-4  # log 2 at init
    run = session.run_dir
    for name in ("config.yaml", "manifest.json", "data_report.json", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(session.final_dir)
    for (n, a), (_, b) in zip(session.model.named_parameters(), reloaded.named_parameters()):
        torch.testing.assert_close(a, b, msg=n)


def test_lora_adapter_is_saved_for_peft_and_merge_gives_a_plain_model(tmp_path, tiny_policy_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    c = cfg(tmp_path, tiny_policy_dir, lora=True, lora_r=4, epochs=1.0)
    session = train_dpo(c, train_records=records(TOPICS[:8]))
    assert (session.final_dir / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    loaded = PeftModel.from_pretrained(base, session.final_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(loaded(ids).logits, session.model(ids).logits)

    merged = train_dpo(cfg(tmp_path / "m", tiny_policy_dir, lora=True, lora_r=4, epochs=1.0, merge_lora=True),
                       train_records=records(TOPICS[:8]))
    plain = AutoModelForCausalLM.from_pretrained(merged.final_dir)
    assert not (merged.final_dir / "adapter_config.json").exists()
    torch.testing.assert_close(plain(ids).logits, merged.model(ids).logits, atol=1e-5, rtol=1e-4)


def test_reference_modes_and_layouts_agree(tmp_path, tiny_policy_dir):
    """Precomputed reference == adapter-disabled reference; prefix-shared == separate prompts."""
    runs = {}
    for name, kw in {"pre": {}, "adapter": {"reference": "adapter_disabled"}, "unshared": {"share_prompt": False}}.items():
        c = cfg(tmp_path / name, tiny_policy_dir, lora=True, lora_r=4, epochs=1.0, max_steps=2)
        runs[name] = [r["loss"] for r in train_dpo(c, train_records=records(TOPICS)).state.history if "loss" in r]
    assert runs["pre"] == pytest.approx(runs["adapter"], abs=1e-5)
    assert runs["pre"] == pytest.approx(runs["unshared"], abs=1e-5)


def test_reference_free_loss_skips_the_reference_pass(tmp_path, tiny_policy_dir):
    session = train_dpo(cfg(tmp_path, tiny_policy_dir, loss="simpo", beta=2.0, max_steps=2),
                        train_records=records(TOPICS[:8]))
    assert not (session.run_dir / "reference_logps.safetensors").exists()


def test_truncation_policies_are_counted(tmp_path, tiny_policy_dir):
    long = records(TOPICS[:6]) + [PairwiseRecord(prompt=[{"role": "user", "content": "word " * 200}],
                                                 chosen="fine answer", rejected="bad")]
    with pytest.raises(Exception, match="max_length"):
        train_dpo(cfg(tmp_path / "e", tiny_policy_dir, max_length=96, max_steps=1), train_records=long)
    session = train_dpo(cfg(tmp_path / "d", tiny_policy_dir, max_length=96, max_steps=1, truncation="drop"),
                        train_records=long)
    assert len(session.train_examples) == 6
    report = json.loads((session.run_dir / "data_report.json").read_text())
    assert any("drop" in k and v == 1 for k, v in report.items()), report


def test_dry_run_explains_without_training(tmp_path, tiny_policy_dir):
    session = train_dpo(cfg(tmp_path, tiny_policy_dir, grad_accum=2, lora=True), train_records=records(TOPICS),
                        dry_run=True)
    text = session.dry_run_text
    assert "4 per device x 2 accumulation x 1 process(es) = 8 pairs per optimizer step" in text
    assert "12 train pairs -> 3 micro-batches, 2 steps per epoch, 6 optimizer steps" in text
    assert "reference policy: precomputed once" in text and "lora: True  (user; default False)" in text
    assert not session.run_dir.exists()  # a dry run writes nothing, not even the run folder


def _recording_loss(monkeypatch, name):
    """Replace the table entry of loss `name` by one that records the hyperparameters it gets."""
    import dataclasses

    from alignlab.train import dpo as dpo_module

    calls, spec = [], dpo_module.LOSSES[name]

    def fn(*args, **kwargs):
        calls.append({k: v for k, v in kwargs.items() if not k.endswith("lengths") and k != "per_example"})
        return spec.fn(*args, **kwargs)

    monkeypatch.setitem(dpo_module.LOSSES, name, dataclasses.replace(spec, fn=fn))
    return calls


def test_simpo_trains_at_its_paper_defaults_unless_the_user_sets_beta(tmp_path, tiny_policy_dir, monkeypatch):
    """Issue 19 defect 2: settings the user did not give come from the chosen loss's LossSpec."""
    import yaml

    calls = _recording_loss(monkeypatch, "simpo")
    base = cfg(tmp_path / "paper", tiny_policy_dir, loss="simpo", max_steps=1)
    unset = DPOConfig(**{k: getattr(base, k) for k in ("model", "output_dir", "batch_size", "learning_rate",
                                                       "progress", "max_length", "loss", "max_steps")})
    session = train_dpo(unset, train_records=records(TOPICS[:4]))
    assert calls and all(c == {"beta": 2.0, "gamma": 0.5} for c in calls)
    saved = yaml.safe_load((session.run_dir / "config.yaml").read_text())
    assert saved["beta"] == 2.0 and saved["loss_options"] == {"gamma": 0.5}

    calls.clear()  # the user's beta and options win; the options they did not give stay the paper's
    train_dpo(cfg(tmp_path / "user", tiny_policy_dir, loss="simpo", beta=0.1, max_steps=1),
              train_records=records(TOPICS[:4]))
    assert calls and all(c == {"beta": 0.1, "gamma": 0.5} for c in calls)


def test_cli_resolves_each_loss_default_and_dry_run_says_where_it_came_from(tmp_path, tiny_policy_dir):
    from alignlab.config import resolve, sources

    c = resolve(DPOConfig, None, {"loss": "cdpo"})
    assert (c.beta, c.loss_options) == (0.1, {"label_smoothing": 0.1})
    c = resolve(DPOConfig, None, {"loss": "simpo", "loss_options": "gamma=1.0"})
    assert (c.beta, c.loss_options) == (2.0, {"gamma": 1.0})
    assert sources(c)["beta"] == "simpo loss default" and sources(c)["loss"] == "user"
    c = resolve(DPOConfig, None, {"loss": "simpo", "beta": "0.1"})
    assert c.beta == 0.1 and sources(c)["beta"] == "user"
    session = train_dpo(resolve(DPOConfig, None, {"model": str(tiny_policy_dir), "loss": "simpo",
                                                  "output_dir": str(tmp_path / "r"), "max_length": "128"}),
                        train_records=records(TOPICS[:4]), dry_run=True)
    text = session.dry_run_text
    assert "beta: 2.0  (simpo loss default)" in text and "loss: 'simpo'  (user; default 'dpo')" in text
    assert "learning_rate=1e-06" in text.split("global defaults:")[1]
