"""A vLLM rollout backend behind `RolloutBackend` (GPU machines with vLLM installed; never imported
on the CPU path: `vllm` is imported when a `VLLMGenerator` is built).

Sampling settings map one to one onto `vllm.SamplingParams` (top_k 0 = off becomes vLLM's -1;
greedy becomes temperature 0), prompts go in as token ids, and each completion's token ids and
the log-prob of each sampled token come back. alignlab's log-probs are log softmax(logits / T)
before any top-k/top-p truncation (`Completions`); the engine is built with
`logprobs_mode="processed_logprobs"` (after the temperature), which is that quantity when nothing
truncates, so top_k / top_p truncation is refused here rather than returning other log-probs.
`sync_weights(model)` pushes the trained policy's weights into the engine before a rollout: all
weights after full fine-tuning, the adapter merged into the base weights under LoRA.

STATUS: written against vLLM's documented offline API (`LLM.generate` with `TokensPrompt` and one
`SamplingParams` per prompt; in-process weight loading as TRL's colocate mode does). Its mapping is
tested on CPU against a stand-in module; the engine itself runs in bench/gpu_check.sh only.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from alignlab.rollout.base import Completions, SamplingParams


def vllm_sampling_params(vllm, params: SamplingParams, seed: int | None):
    """The `vllm.SamplingParams` of alignlab's `params` for one prompt sampled with `seed`."""
    return vllm.SamplingParams(
        n=params.n, temperature=0.0 if params.greedy else params.temperature, top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_new_tokens,
        stop=list(params.stop_strings or []), include_stop_str_in_output=True, seed=seed,
        logprobs=None if params.greedy else 0, detokenize=True,
    )


class VLLMGenerator:
    """`RolloutBackend` over a vLLM engine that holds a copy of the policy (`model_path`)."""

    def __init__(self, model_path: str, tokenizer=None, *, gpu_memory_utilization: float = 0.3, dtype: str = "auto",
                 seed: int = 0, **engine_kwargs):
        import vllm  # only here: vLLM is never a dependency of the CPU path

        self.vllm, self.tokenizer = vllm, tokenizer
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        self.llm = vllm.LLM(model=str(model_path), gpu_memory_utilization=gpu_memory_utilization, dtype=dtype,
                            seed=seed, enable_prefix_caching=True, **engine_kwargs)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, *,
                 seeds: list[int] | None = None) -> Completions:
        """Sample `params.n` completions per prompt; prompt i's samples are seeded by seeds[i]
        (or params.seed + i), so they do not depend on the other prompts of the call."""
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("VLLMGenerator.generate: every prompt needs at least one token")
        if not params.greedy and (params.top_k or params.top_p < 1):
            raise ValueError("VLLMGenerator: top_k / top_p truncation would return log-probs of the truncated "
                             "distribution (alignlab's are before truncation); use the HF backend for them")
        base = params.seed if params.seed is not None else None
        per_prompt = [vllm_sampling_params(self.vllm, params, seeds[i] if seeds is not None else
                                           (None if base is None else base + i)) for i in range(len(prompt_ids))]
        prompts = [self.vllm.inputs.TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        outputs = self.llm.generate(prompts, sampling_params=per_prompt, use_tqdm=False)
        return completions_from(outputs, prompt_ids, params)

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Load the trained policy's weights into the engine (the LoRA adapter merged in)."""
        with merged(model) as weights:
            _engine_model(self.llm).load_weights(weights.items())


def completions_from(outputs, prompt_ids: list[list[int]], params: SamplingParams) -> Completions:
    """vLLM's RequestOutputs (one per prompt, in order) as alignlab's prompt-major `Completions`."""
    rows, completion_ids, texts, logprobs, finished = [], [], [], [], []
    for i, out in enumerate(outputs):
        if len(out.outputs) != params.n:
            raise RuntimeError(f"vLLM returned {len(out.outputs)} completions for prompt {i}, expected {params.n}")
        for sample in out.outputs:
            ids = list(sample.token_ids)
            rows.append(i)
            completion_ids.append(ids)
            texts.append(sample.text)
            finished.append(sample.finish_reason == "stop")  # "length": cut at max_new_tokens
            if not params.greedy:
                logprobs.append(torch.tensor([step[t].logprob for step, t in zip(sample.logprobs, ids)],
                                             dtype=torch.float32))
    return Completions(prompt_index=rows, prompt_ids=[prompt_ids[i] for i in rows], completion_ids=completion_ids,
                       texts=texts, logprobs=None if params.greedy else logprobs, finished=finished, n=params.n)


@contextmanager
def merged(model: torch.nn.Module):
    """The policy's weights by the base model's parameter names: a PEFT model's adapter is merged
    for the duration (and unmerged after), so the engine gets W + BA under the plain names."""
    peft = hasattr(model, "merge_adapter") and hasattr(model, "get_base_model")
    if peft:
        model.merge_adapter()
    try:
        base = model.get_base_model() if peft else model
        weights = {name.replace(".base_layer", ""): p.detach() for name, p in base.named_parameters()
                   if "lora_" not in name}
        yield weights
    finally:
        if peft:
            model.unmerge_adapter()


def _engine_model(llm):
    """The engine's model in this process (vLLM run in-process, as TRL's colocate mode)."""
    executor = llm.llm_engine.model_executor
    worker = executor.driver_worker
    worker = getattr(worker, "worker", worker)  # vLLM V1 wraps the worker once more
    return worker.model_runner.model
