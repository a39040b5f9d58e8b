"""The default rollout backend: HF `generate` with a KV cache on left-padded batches.

Sampling is done by our own logits processor (`_Sampler`), not by `generate`'s warpers:
it draws the token from `softmax(logits / T)` (optionally top-k/top-p truncated) with a private
`torch.Generator`, records that token's log-prob from the logsumexp it already computed, and
hands `generate` a one-hot score so `generate`'s greedy step picks exactly that token. Versus
`output_scores`/`output_logits` this keeps O(B) floats per step instead of a (B, V) tensor per
step (80 rows x 32 steps x 49k vocab = 0.5 GB for SmolLM2), needs no second log-softmax pass,
leaves the global RNG alone, and sampling stays cheap: the untruncated path is one
logsumexp, one exp and an inverse-CDF draw per step (`inverse_cdf_sample`: ~30x cheaper than
`torch.multinomial` on a 49k vocabulary, which draws an exponential variate per vocabulary entry).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)

from alignlab.data.tokenize import encode_prompt
from alignlab.rollout.base import Completions, SamplingParams
from alignlab.rollout.mixture import GeometricMixture, Mixture


class _Sampler(LogitsProcessor):
    """Samples the next token itself and records log softmax(logits / T)[token] per step. With
    `row_generators` (one per row), each row draws from its own generator, by inverse CDF, so a
    row's tokens do not depend on which other rows share its batch."""

    def __init__(self, params: SamplingParams, generator: torch.Generator,
                 row_generators: list[torch.Generator] | None = None):
        self.params, self.generator, self.row_generators = params, generator, row_generators
        self.step_logps: list[torch.Tensor] = []  # one (B,) tensor per decoding step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        p = self.params
        logits = scores.float()  # (B, V)
        if p.temperature != 1.0:
            logits = logits / p.temperature
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (B, 1)
        truncated = _truncate(logits, p.top_k, p.top_p)
        probs = torch.exp(logits - lse) if truncated is logits else torch.softmax(truncated, dim=-1)
        token = inverse_cdf_sample(probs, self.row_generators or self.generator)  # (B, 1)
        self.step_logps.append((logits.gather(1, token) - lse).squeeze(1))
        return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)


def inverse_cdf_sample(probs: torch.Tensor, generator: torch.Generator | list[torch.Generator],
                       block: int = 256) -> torch.Tensor:
    """One draw per row from the (unnormalized, non-negative) weights `probs` (B, V): the token t
    with C(t-1) <= u < C(t), C the running sum of the row's weights and u ~ U[0, C(V)).

    Two levels keep it exact and cheap: u first picks a block of `block` tokens from the running
    sum of block masses, then a token inside that block; both sums run in float64, so a token's
    probability is its weight over the row's total up to float64 rounding. A zero-weight token
    (outside top-k / top-p) is never drawn. `generator`: one for the batch, or a list of one per row
    (row b's uniform from generators[b], so a row's draw does not depend on its batch-mates).
    Returns (B, 1) long."""
    B, V = probs.shape
    pad = (-V) % block
    blocks = (torch.nn.functional.pad(probs, (0, pad)) if pad else probs).reshape(B, -1, block)  # (B, nb, block)
    cum = blocks.sum(-1, dtype=torch.float64).cumsum(-1)  # (B, nb)
    if isinstance(generator, torch.Generator):
        u = torch.rand(B, 1, generator=generator, dtype=torch.float64, device=probs.device)
    else:
        u = torch.cat([torch.rand(1, 1, generator=g, dtype=torch.float64, device=probs.device) for g in generator])
    u = u * cum[:, -1:]
    b = torch.searchsorted(cum, u, right=True).clamp_(max=cum.shape[1] - 1)  # (B, 1): first block with C > u
    before = torch.where(b > 0, cum.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(u))
    inside = blocks.gather(1, b[..., None].expand(B, 1, block)).squeeze(1)  # (B, block)
    j = torch.searchsorted(inside.double().cumsum(-1), u - before, right=True)
    # float64 rounding can put u - before at the block's very end: take its last positive weight then
    last = torch.where(inside > 0, torch.arange(block, device=probs.device), -1).max(-1, keepdim=True).values
    return b * block + torch.minimum(j, last)


def _truncate(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Logits with tokens outside the top-k / nucleus set at -inf; `logits` itself when neither is on."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # drop a token when the mass *before* it already reaches top_p (the top token always stays)
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    return logits


# Everything that could change the logits `_Sampler` sees is set to its neutral value explicitly:
# `generate` fills every field left unset from the model's generation_config.json (Qwen2.5-Instruct
# ships repetition_penalty=1.05), and a processor running before `_Sampler` would make the
# sampled distribution and the recorded log-probs differ from the model's. The sampling-only
# fields get transformers' global defaults, so a model's do_sample settings raise no warnings.
_NEUTRAL_GENERATION = dict(
    do_sample=False, num_beams=1, repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
    encoder_no_repeat_ngram_size=0, min_length=0, guidance_scale=1.0, renormalize_logits=False,
    remove_invalid_values=False, temperature=1.0, top_k=50, top_p=1.0, typical_p=1.0, epsilon_cutoff=0.0,
    eta_cutoff=0.0,
)
# Logits-changing fields whose only "off" value is None, which `generate` would overwrite; and
# min_new_tokens, whose 0 next to min_length=0 makes transformers warn on every call.
_UNSUPPORTED_GENERATION = ("bad_words_ids", "sequence_bias", "forced_bos_token_id", "forced_eos_token_id",
                           "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
                           "watermarking_config")


def _check_generation_config(model: nn.Module) -> None:
    """Refuse a model whose generation_config would alter the logits in a way we cannot switch off."""
    config = getattr(model, "generation_config", None)
    found = [name for name in _UNSUPPORTED_GENERATION if getattr(config, name, None) is not None]
    if getattr(config, "min_new_tokens", None):  # 0 is off too
        found.insert(0, "min_new_tokens")
    if found:
        raise ValueError(f"HFGenerator: the model's generation_config sets {', '.join(found)}, which would change "
                         "the sampled distribution; set them to None on model.generation_config first")


class _StopRecorder(StoppingCriteria):
    """Wraps stop-string criteria and remembers the sequence length at which each row first stopped,
    so rows that stopped on a stop string are not confused with pad tokens when pad == eos."""

    def __init__(self, inner: StoppingCriteria, batch_size: int):
        self.inner = inner
        self.stopped_at = torch.full((batch_size,), -1, dtype=torch.long)  # total length incl. prompt

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        hit = self.inner(input_ids, scores, **kwargs)  # (B,)
        new = hit.cpu() & (self.stopped_at < 0)
        self.stopped_at[new] = input_ids.shape[1]
        return hit


class HFGenerator:
    """`RolloutBackend` over a transformers causal LM (PEFT-wrapped models work too).

    All prompts x n samples go through `generate` in chunks of `batch_size` rows (sorted by prompt
    length so each chunk pads little), left-padded, with the KV cache on. `tokenizer` may be None
    (tests with tiny models): pass `eos_token_id` then; texts come back as None.
    Results are reproducible for the same seed, prompts, params and batch_size.
    With `mixture`, it samples the token-level geometric mixture of `model` and the mixture's
    reference (Nash-MD's opponent, `alignlab.rollout.mixture`), and the log-probs are the mixture's.
    """

    def __init__(self, model: nn.Module, tokenizer=None, *, batch_size: int = 64,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
                 progress: str | None = None, mixture: Mixture | None = None):
        self.model, self.tokenizer, self.batch_size, self.mixture = model, tokenizer, batch_size, mixture
        self.progress = progress  # a description shows a progress bar over the chunks
        self.eos_token_ids = _eos_ids(model, tokenizer, eos_token_id)
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = tokenizer.pad_token_id
        self.pad_token_id = self.eos_token_ids[0] if pad_token_id is None else pad_token_id

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, *,
                 seeds: list[int] | None = None) -> Completions:
        """`seeds` (one per prompt): sample j of prompt i draws from its own generator seeded by
        (seeds[i], j) instead of the call's one generator, so it is the same whichever other prompts
        share the call (data-parallel rollouts split the prompts over processes)."""
        if seeds is not None and len(seeds) != len(prompt_ids):
            raise ValueError(f"HFGenerator.generate: {len(seeds)} seeds for {len(prompt_ids)} prompts")
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("HFGenerator.generate: every prompt needs at least one token")
        if params.stop_strings and self.tokenizer is None:
            raise ValueError("SamplingParams.stop_strings needs a tokenizer")
        _check_generation_config(self.model)
        rows = [i for i in range(len(prompt_ids)) for _ in range(params.n)]  # prompt-major
        order = sorted(range(len(rows)), key=lambda r: len(prompt_ids[rows[r]]))
        device = next(self.model.parameters()).device
        generator = torch.Generator(device)
        generator.manual_seed(params.seed) if params.seed is not None else generator.seed()
        row_generators = None
        if seeds is not None:
            row_generators = [torch.Generator(device).manual_seed(_row_seed(seeds[rows[r]], r % params.n))
                              for r in range(len(rows))]
        completion_ids: list[list[int]] = [[] for _ in rows]
        logprobs: list[torch.Tensor] = [torch.zeros(0) for _ in rows]
        finished = [False] * len(rows)
        was_training = self.model.training
        self.model.eval()  # LoRA/attention dropout off while sampling
        from tqdm.auto import tqdm

        starts = range(0, len(rows), self.batch_size)
        try:
            for start in tqdm(starts, desc=self.progress, disable=self.progress is None, dynamic_ncols=True,
                              unit="batch"):
                chunk = order[start : start + self.batch_size]
                ids, lps, fin = self._generate_chunk([prompt_ids[rows[r]] for r in chunk], params, generator,
                                                     [row_generators[r] for r in chunk] if row_generators else None)
                for r, c, lp, f in zip(chunk, ids, lps, fin):
                    completion_ids[r], logprobs[r], finished[r] = c, lp, f
        finally:
            self.model.train(was_training)
        texts = None
        if self.tokenizer is not None:
            texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        return Completions(prompt_index=rows, prompt_ids=[prompt_ids[i] for i in rows],
                           completion_ids=completion_ids, texts=texts,
                           logprobs=None if params.greedy else logprobs, finished=finished, n=params.n)

    # no_grad, not inference_mode: the returned log-probs must be ordinary tensors, since trainers
    # use them in autograd graphs and in-place ops, which inference tensors refuse.
    @torch.no_grad()
    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams, generator: torch.Generator,
                        row_generators: list[torch.Generator] | None = None):
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)  # (B, P)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # LEFT padding: every row's last prompt token sits at column P-1
            input_ids[i, width - len(p) :] = torch.tensor(p)
            attention_mask[i, width - len(p) :] = 1
        processors = []
        if self.mixture is not None:  # the mixture applies the temperature itself (greedy: its argmax)
            temperature = 1.0 if params.greedy else params.temperature
            processors.append(GeometricMixture(self.mixture, attention_mask.to(device), temperature))
            params = dataclasses.replace(params, temperature=1.0)
        sampler = _Sampler(params, generator, row_generators)
        if not params.greedy:
            processors.append(sampler)
        stops = StoppingCriteriaList()
        if params.stop_strings:
            stops.append(_StopRecorder(StopStringCriteria(self.tokenizer, list(params.stop_strings)), len(prompts)))
        config = GenerationConfig(**_NEUTRAL_GENERATION, max_new_tokens=params.max_new_tokens,
                                  eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id, use_cache=True)
        sequences = self.model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config,
            logits_processor=LogitsProcessorList(processors), stopping_criteria=stops,
        )
        new_tokens = sequences[:, width:].cpu()  # (B, T) with pad after each row's end
        step_logps = torch.stack(sampler.step_logps, 1).cpu() if sampler.step_logps else None  # (B, T')
        stopped_at = stops[0].stopped_at - width if params.stop_strings else None
        out_ids, out_lps, out_fin = [], [], []
        for i in range(len(prompts)):
            length, done = _completion_length(new_tokens[i], self.eos_token_ids,
                                               None if stopped_at is None else int(stopped_at[i]))
            out_ids.append(new_tokens[i, :length].tolist())
            out_lps.append(step_logps[i, :length].clone() if step_logps is not None else None)
            out_fin.append(done)
        return out_ids, out_lps, out_fin


def _row_seed(prompt_seed: int, sample: int) -> int:
    """The seed of one prompt's sample: distinct per (prompt seed, sample), within int64."""
    return (int(prompt_seed) * 1_000_003 + sample) % (2**63 - 1)


def _completion_length(tokens: torch.Tensor, eos_ids: list[int], stopped_at: int | None) -> tuple[int, bool]:
    """(length, finished) of one row: up to and including its first EOS, or its stop-string end."""
    is_eos = torch.isin(tokens, torch.tensor(eos_ids))
    length, done = tokens.shape[0], False
    if is_eos.any():
        length, done = int(is_eos.nonzero()[0, 0]) + 1, True
    if stopped_at is not None and 0 < stopped_at <= length:  # stopped_at <= 0: never stopped
        length, done = stopped_at, True
    return length, done


def _eos_ids(model: nn.Module, tokenizer, eos_token_id) -> list[int]:
    """Every id that ends a completion: the explicit argument, else the tokenizer's EOS plus the
    model's generation-config EOS ids (chat models often end turns on a token other than EOS)."""
    ids: list[int] = []
    candidates = [eos_token_id] if eos_token_id is not None else [
        getattr(tokenizer, "eos_token_id", None), getattr(getattr(model, "generation_config", None), "eos_token_id", None)]
    for c in candidates:
        for i in (c if isinstance(c, (list, tuple)) else [c]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("HFGenerator: no EOS id found; pass eos_token_id=")
    return ids


def generate_texts(model: nn.Module, tokenizer, prompts: list, params: SamplingParams, *,
                   batch_size: int = 64, progress: str | None = None) -> Completions:
    """Sample completions for prompts (text or chat message lists), tokenized exactly as the
    trainers tokenize them (`alignlab.data.encode_prompt`: chat template + generation prompt)."""
    prompt_ids = [encode_prompt(tokenizer, prompt) for prompt in prompts]
    return HFGenerator(model, tokenizer, batch_size=batch_size, progress=progress).generate(prompt_ids, params)
