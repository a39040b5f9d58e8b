"""One GPU check of online training: GRPO with a rollout backend (HF `generate`, or vLLM through
`alignlab.rollout.vllm`), measuring decode throughput, step time and model FLOPs utilization (MFU). Prints one JSON line and writes it to --out. bench/gpu_check.sh runs it once
per backend and the data-parallel / FSDP checks around it.

    python bench/gpu_check.py --backend hf --out bench/results/gpu_check-hf.json
    python bench/gpu_check.py --backend hf --model DIR --device cpu --prompts 2 --iterations 1   # smoke

MFU = achieved model FLOPs / peak: training counts 6 N FLOPs per trained token (forward and
backward of N parameters), generation 2 N per generated token (forward only), attention FLOPs
left out (small at these lengths); the peak is --peak-tflops (H200 dense bf16: 989).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ["cats", "rain", "tea", "maps", "trains", "bread", "snow", "music", "paint", "boats", "lamps", "owls",
         "clouds", "shoes", "rivers", "kites"]


def backend_available(name: str) -> str | None:
    """None if the backend can run here, else why not."""
    if name == "hf":
        return None
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed"
    return None


def measure_generation(model, tokenizer, prompts, args) -> dict:
    """Decode throughput of the backend alone on the GRPO prompts (after one warm-up call)."""
    from alignlab.data.tokenize import encode_prompt
    from alignlab.rollout.base import SamplingParams
    from alignlab.train.online.config import OnlineConfig
    from alignlab.train.online.rollout import rollout_generator

    ids = [encode_prompt(tokenizer, p) for p in prompts]
    cfg = OnlineConfig(model=args.model, rollout_backend=args.backend, rollout_batch_size=len(ids) * args.samples)
    generator = rollout_generator(cfg, model, tokenizer)
    params = SamplingParams(n=args.samples, max_new_tokens=args.max_new_tokens, seed=0)
    generator.generate(ids[:1], params)  # warm-up (CUDA context, kernels)
    _sync()
    start = time.perf_counter()
    out = generator.generate(ids, params, seeds=list(range(len(ids))))
    _sync()
    seconds = time.perf_counter() - start
    tokens = sum(len(c) for c in out.completion_ids)
    return {"generated_tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    p.add_argument("--model", default="embedded", help="policy: 'embedded' (SmolLM2-135M) or a local folder")
    p.add_argument("--device", default="cuda", help="cuda | cpu (cpu: a smoke run of the script itself)")
    p.add_argument("--prompts", type=int, default=16, help="prompts per iteration")
    p.add_argument("--samples", type=int, default=8, help="completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense peak at --precision")
    p.add_argument("--out", default="bench/results/gpu_check-hf.json")
    args = p.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    from alignlab.models.load import load_policy, load_tokenizer
    from alignlab.rewards.base import FunctionReward
    from alignlab.train.online import resolve_online, train_online

    report = {"backend": args.backend, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "settings": vars(args)}
    why_not = backend_available(args.backend)
    if why_not is not None or (args.device == "cuda" and not torch.cuda.is_available()):
        report["skipped"] = why_not or "no CUDA device"
        return _emit(report, args.out)
    tokenizer = load_tokenizer(args.model)
    model = load_policy(args.model)
    params = sum(t.numel() for t in model.parameters())
    prompts = [[{"role": "user", "content": f"Write a few lines about {w}."}] for w in
               (WORDS * (args.prompts // len(WORDS) + 1))[: args.prompts]]
    device = "cuda" if args.device == "cuda" else "cpu"
    with torch.autocast(device, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        generation = measure_generation(model.to(device), tokenizer, prompts, args)
    generation["mfu"] = 2 * params * generation["tokens_per_s"] / (args.peak_tflops * 1e12)
    reward = FunctionReward(lambda texts: [min(len(t), 200) / 200 for t in texts], name="length", responses_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve_online("grpo", flags=dict(
            model=args.model, output_dir=str(Path(tmp) / "run"), iterations=args.iterations,
            prompts_per_step=args.prompts, samples_per_prompt=args.samples, max_new_tokens=args.max_new_tokens,
            batch_size=max(1, args.prompts * args.samples // 4), grad_accum=4, precision=args.precision,
            learning_rate=1e-6, kl_coef=0.0, progress=False, rollout_backend=args.backend))
        summary = train_online(cfg, model=model, tokenizer=tokenizer, train_rows=[{"prompt": q} for q in prompts],
                               eval_rows=[], rewards=reward).summary
        rows = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        trained_tokens = max((r.get("tokens_seen", 0) for r in rows), default=0)  # a running count
    train_seconds = summary["train_seconds"]
    report.update({
        "parameters": params, "generation": generation,
        "grpo": {
            "iterations": summary["iterations"], "steps": summary["steps"], "completions": summary["completions"],
            "seconds": summary["loop_seconds"], "generation_seconds": summary["generation_seconds"],
            "step_seconds": train_seconds / max(summary["steps"], 1),
            "completions_per_s": summary["completions_per_second"],
            "trained_tokens": trained_tokens,
            "train_mfu": 6 * params * trained_tokens / max(train_seconds, 1e-9) / (args.peak_tflops * 1e12),
        },
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    })
    return _emit(report, args.out)


def _emit(report: dict, out: str) -> dict:
    text = json.dumps(report, default=str)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
