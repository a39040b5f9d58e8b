"""The vLLM backend's mapping, on CPU against a stand-in `vllm` module (vLLM itself runs only in
bench/gpu_check.sh): alignlab's sampling settings become vLLM's one to one, each prompt gets its
own seed, completions come back prompt-major with token ids, per-token log-probs and finished
flags, and the weights pushed into the engine are the policy's, a LoRA adapter merged in."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest
import torch

from alignlab.rollout.base import SamplingParams


@dataclass
class _Logprob:
    logprob: float


@dataclass
class _Sample:
    token_ids: list
    text: str
    finish_reason: str
    logprobs: list | None


@dataclass
class _Request:
    outputs: list


@dataclass
class _Engine:
    calls: list = field(default_factory=list)
    loaded: dict = field(default_factory=dict)

    def load_weights(self, items):
        self.loaded = {k: v.clone() for k, v in items}


def fake_vllm():
    import importlib.machinery

    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    engine = _Engine()

    class LLM:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(model=engine))
            self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(driver_worker=worker))

        def generate(self, prompts, sampling_params, use_tqdm):
            engine.calls.append((prompts, sampling_params))
            out = []
            for i, (prompt, sp) in enumerate(zip(prompts, sampling_params)):
                samples = []
                for j in range(sp.n):
                    ids = [100 + i, 200 + j] if j == 0 else [100 + i]
                    lps = None if sp.logprobs is None else [{t: _Logprob(-0.5 * (k + 1)), 7: _Logprob(-9.0)}
                                                            for k, t in enumerate(ids)]
                    samples.append(_Sample(ids, f"p{i}s{j}", "stop" if j == 0 else "length", lps))
                out.append(_Request(samples))
            return out

    module.LLM = LLM
    module.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    module.inputs = types.SimpleNamespace(TokensPrompt=lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids})
    return module, engine


@pytest.fixture
def vllm_stub(monkeypatch):
    module, engine = fake_vllm()
    monkeypatch.setitem(sys.modules, "vllm", module)
    return engine


def test_settings_map_one_to_one_and_completions_come_back_prompt_major(vllm_stub):
    from alignlab.rollout.vllm import VLLMGenerator

    gen = VLLMGenerator("some/model", seed=3)
    assert gen.llm.kwargs["logprobs_mode"] == "processed_logprobs" and gen.llm.kwargs["seed"] == 3
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=5, stop_strings=("END",), seed=11)
    out = gen.generate([[1, 2], [3]], params, seeds=[40, 41])
    prompts, sps = vllm_stub.calls[-1]
    assert [p["prompt_token_ids"] for p in prompts] == [[1, 2], [3]]
    sp = sps[1]
    assert (sp.n, sp.temperature, sp.top_p, sp.top_k, sp.max_tokens, sp.stop, sp.seed, sp.logprobs) == \
        (2, 0.7, 1.0, -1, 5, ["END"], 41, 0)
    assert sp.include_stop_str_in_output  # alignlab's completions keep the stop string's tokens
    assert out.prompt_index == [0, 0, 1, 1] and out.n == 2 and len(out) == 4
    assert out.prompt_ids == [[1, 2], [1, 2], [3], [3]]
    assert out.completion_ids == [[100, 200], [100], [101, 200], [101]]
    assert out.finished == [True, False, True, False]  # "length": cut at max_new_tokens
    torch.testing.assert_close(out.logprobs[0], torch.tensor([-0.5, -1.0]))  # the sampled tokens' own log-probs
    assert out.texts == ["p0s0", "p0s1", "p1s0", "p1s1"]
    # without per-prompt seeds, prompt i is seeded params.seed + i
    gen.generate([[1, 2], [3]], params)
    assert [sp.seed for sp in vllm_stub.calls[-1][1]] == [11, 12]


def test_greedy_has_no_log_probs_and_truncation_is_refused(vllm_stub):
    from alignlab.rollout.vllm import VLLMGenerator

    gen = VLLMGenerator("m")
    out = gen.generate([[1]], SamplingParams(n=1, greedy=True, max_new_tokens=3))
    assert out.logprobs is None and vllm_stub.calls[-1][1][0].temperature == 0.0
    with pytest.raises(ValueError, match="truncat"):
        gen.generate([[1]], SamplingParams(n=1, top_k=5))


def test_synced_weights_are_the_policy_s_with_the_lora_adapter_merged(vllm_stub, tiny_policy_dir):
    from alignlab.models.load import add_lora, load_policy
    from alignlab.rollout.vllm import VLLMGenerator

    plain = load_policy(str(tiny_policy_dir))
    model = add_lora(load_policy(str(tiny_policy_dir)), r=4, alpha=8, dropout=0.0, target_modules=["all-linear"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)  # a non-zero adapter: merged weights differ from the base ones
    gen = VLLMGenerator("m")
    gen.sync_weights(model)
    loaded = vllm_stub.loaded
    assert set(loaded) == {n for n, _ in plain.named_parameters()}  # the base model's names, no lora_ tensors
    merged = model.merge_and_unload()
    for name, p in merged.named_parameters():
        torch.testing.assert_close(loaded[name], p.detach(), msg=name)
    changed = [n for n in loaded if not torch.equal(loaded[n], dict(plain.named_parameters())[n])]
    assert changed and all("proj" in n for n in changed)


def test_the_online_trainers_sample_with_vllm_when_asked_syncing_the_policy_first(vllm_stub, tiny_policy_dir):
    from alignlab.config import ConfigError
    from alignlab.models.load import load_policy
    from alignlab.train.online.config import OnlineConfig
    from alignlab.train.online.rollout import SyncedGenerator, rollout_generator

    with pytest.raises(ConfigError, match="truncated"):
        OnlineConfig(rollout_backend="vllm", top_k=20).validate()
    model = load_policy(str(tiny_policy_dir))
    generator = rollout_generator(OnlineConfig(model=str(tiny_policy_dir), rollout_backend="vllm", seed=5), model, None)
    assert isinstance(generator, SyncedGenerator) and generator.engine.llm.kwargs["seed"] == 5
    with torch.no_grad():
        model.model.norm.weight.fill_(2.0)  # a training step changed the policy
    generator.generate([[1, 2]], SamplingParams(n=1))
    torch.testing.assert_close(vllm_stub.loaded["model.norm.weight"], model.model.norm.weight)  # synced before sampling
    assert len(vllm_stub.calls) == 1


def test_the_vllm_backend_without_vllm_is_one_clear_line(monkeypatch, tiny_policy_dir):
    from alignlab.train.online.config import OnlineConfig
    from alignlab.train.online.rollout import rollout_generator

    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ValueError, match="needs vLLM"):
        rollout_generator(OnlineConfig(rollout_backend="vllm"), None, None)


@pytest.mark.parametrize("vllm,cuda,flags,expected", [
    (False, True, {}, ("hf", "vLLM is not installed")),
    (True, False, {}, ("hf", "no CUDA device")),
    (True, True, {"top_k": 20}, ("hf", "top_k/top_p truncation")),
    (True, True, {"rollout_dtype": "bfloat16"}, ("hf", "rollout_dtype bfloat16")),
    (True, True, {}, ("vllm", "vLLM and a CUDA device")),
])
def test_auto_takes_vllm_only_where_it_runs_exactly(monkeypatch, vllm, cuda, flags, expected):
    import importlib.util

    from alignlab.train.online.config import OnlineConfig
    from alignlab.train.online.rollout import resolve_backend

    real = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object() if name == "vllm" and vllm else
                        (None if name == "vllm" else real(name, *a)))
    monkeypatch.setattr("torch.cuda.is_available", lambda: cuda)
    cfg = OnlineConfig(**flags)
    assert cfg.rollout_backend == "auto"  # the default
    backend, why = resolve_backend(cfg)
    assert (backend, expected[1] in why) == (expected[0], True)
    assert resolve_backend(OnlineConfig(rollout_backend="hf", **flags))[0] == "hf"


def test_auto_on_this_machine_samples_with_hf_and_says_why(tiny_policy_dir, capsys):
    from alignlab.models.load import load_policy
    from alignlab.rollout.hf import HFGenerator
    from alignlab.train.online.config import OnlineConfig
    from alignlab.train.online.rollout import rollout_generator

    generator = rollout_generator(OnlineConfig(model=str(tiny_policy_dir)), load_policy(str(tiny_policy_dir)), None)
    assert isinstance(generator, HFGenerator)
    assert "rollout_backend auto -> hf" in capsys.readouterr().out
