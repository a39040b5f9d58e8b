"""Decode throughput: alignlab's rollout sampler (`HFGenerator`) vs transformers' plain
`generate(do_sample=True)` on the same prompts, model and settings, side by side in one process.

Both sides get the same left-padded batch (the lab's sentiment chat prompts x `--samples`, all
rows in one `generate` call), the same `--max-new-tokens`, temperature 1, top-k 0, top-p 1, and
the same EOS/pad ids. alignlab's side also records each token's log-prob and samples with a
private seeded generator; transformers' side samples with `torch.multinomial` on the global RNG
and records nothing. Tokens/s counts completion tokens up to and including each row's first EOS.
The variants run interleaved (`--repeats` rounds after one warm-up round), so machine load hits
all of them alike; the medians and their ratios are reported. `--bf16` adds both sides on a bf16
copy of the model (a different precision: the ratio to fp32 says what a bf16 rollout copy buys).

    python bench/generate_vs_hf.py                 # writes bench/results/generate_vs_hf.json
    python bench/generate_vs_hf.py --prompts 4 --samples 2 --max-new-tokens 4 --repeats 1 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OFFLINE_ENV, peak_rss_mb, sentiment_prompts, write_json  # noqa: E402

os.environ.update(OFFLINE_ENV)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "generate_vs_hf.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M-Instruct) or a save_pretrained folder")
    p.add_argument("--prompts", type=int, default=16, help="sentiment-task chat prompts")
    p.add_argument("--samples", type=int, default=4, help="completions per prompt (rows = prompts x samples)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round")
    p.add_argument("--bf16", action="store_true", help="also run both sides on a bf16 copy of the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="where the JSON result is written")
    args = p.parse_args(argv)
    if min(args.prompts, args.samples, args.max_new_tokens, args.repeats) < 1 or not args.temperature > 0:
        p.error("--prompts, --samples, --max-new-tokens, --repeats must be >= 1 and --temperature > 0")
    return args


def completion_tokens(new_tokens, eos_ids: list[int]) -> int:
    """Tokens up to and including each row's first EOS (all of them when a row never ends)."""
    import torch

    is_eos = torch.isin(new_tokens, torch.tensor(eos_ids))  # (B, T)
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, new_tokens.shape[1])
    return int(first.sum())


def hf_side(model, batch, eos_ids: list[int], pad_id: int, args) -> int:
    """transformers' own sampling: do_sample=True, top-k/top-p off, the batch as given."""
    import torch
    from transformers import GenerationConfig

    from alignlab.rollout.hf import _NEUTRAL_GENERATION

    config = GenerationConfig(**{**_NEUTRAL_GENERATION, "do_sample": True, "top_k": 0,
                                 "temperature": args.temperature}, max_new_tokens=args.max_new_tokens,
                              eos_token_id=eos_ids, pad_token_id=pad_id, use_cache=True)
    with torch.no_grad():
        seqs = model.generate(**batch, generation_config=config)
    return completion_tokens(seqs[:, batch["input_ids"].shape[1]:], eos_ids)


def alignlab_side(model, tokenizer, prompt_ids, args) -> int:
    from alignlab.rollout.base import SamplingParams
    from alignlab.rollout.hf import HFGenerator

    params = SamplingParams(n=args.samples, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            seed=args.seed)
    out = HFGenerator(model, tokenizer, batch_size=len(prompt_ids) * args.samples).generate(prompt_ids, params)
    return sum(map(len, out.completion_ids))


def left_padded(prompt_ids, n: int, pad_id: int) -> dict:
    """The batch HFGenerator builds: prompt-major rows, sorted by length, left-padded."""
    import torch

    rows = sorted((p for p in prompt_ids for _ in range(n)), key=len)
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, p in enumerate(rows):
        input_ids[i, width - len(p):], attention_mask[i, width - len(p):] = torch.tensor(p), 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def main(argv: list[str] | None = None) -> int:
    import json
    from importlib.metadata import version

    import torch

    from alignlab.data.tokenize import encode_prompt
    from alignlab.models.load import load_policy, load_tokenizer
    from alignlab.rollout.hf import _eos_ids

    args = parse_args(argv)
    tokenizer, model = load_tokenizer(args.model), load_policy(args.model).eval()
    prompt_ids = [encode_prompt(tokenizer, p) for p in sentiment_prompts(args.prompts, seed=args.seed)]
    eos_ids, pad_id = _eos_ids(model, tokenizer, None), tokenizer.pad_token_id
    batch = left_padded(prompt_ids, args.samples, pad_id)
    models = {"fp32": model}
    if args.bf16:
        models["bf16"] = copy.deepcopy(model).to(torch.bfloat16)
    variants = {}
    for dtype, m in models.items():
        variants[f"alignlab_{dtype}"] = lambda m=m: alignlab_side(m, tokenizer, prompt_ids, args)
        variants[f"transformers_{dtype}"] = lambda m=m: hf_side(m, batch, eos_ids, pad_id, args)
    torch.manual_seed(args.seed)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    tokens: dict[str, list[int]] = {k: [] for k in variants}
    for round_ in range(args.repeats + 1):  # round 0 warms up and is not counted
        for name, run in variants.items():
            start = time.perf_counter()
            count = run()
            seconds = time.perf_counter() - start
            if round_:
                rates[name].append(count / seconds)
                tokens[name].append(count)
    median = {k: statistics.median(v) for k, v in rates.items()}
    report = {
        "tokens_per_s_median": median,
        "tokens_per_s_runs": rates,
        "completion_tokens_runs": tokens,
        "alignlab_vs_transformers_fp32": median["alignlab_fp32"] / median["transformers_fp32"],
        "setup": {
            "model": args.model, "prompts": args.prompts, "samples_per_prompt": args.samples,
            "rows_per_generate_call": args.prompts * args.samples, "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature, "top_k": 0, "top_p": 1.0, "repeats": args.repeats, "seed": args.seed,
            "device": "cpu", "torch_threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(),
            "load_average_at_end": os.getloadavg()[0],
            "versions": {name: version(name) for name in ("torch", "transformers")},
        },
    }
    if args.bf16:
        report["alignlab_vs_transformers_bf16"] = median["alignlab_bf16"] / median["transformers_bf16"]
        report["alignlab_bf16_vs_fp32"] = median["alignlab_bf16"] / median["alignlab_fp32"]
    print(json.dumps(report), flush=True)
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
