"""SFT training throughput and memory: alignlab vs TRL's SFTTrainer, same model, data and settings.

Both sides fine-tune the same model (fp32, CPU, all weights) on the same synthetic prompt/completion
pairs for one epoch, loss on the completion tokens only, padding-free packing on both sides, the
same learning rate and a linear schedule without warmup. Each side runs in a subprocess of its own,
so its peak RSS is its own. Prints one JSON line and writes it to --out.

    python bench/sft_vs_trl.py                    # the full benchmark (see bench/README.md)
    python bench/sft_vs_trl.py --model DIR --examples 8 --only trl

Token ids: alignlab builds an example as chat-template(prompt, generation prompt) + completion +
<|im_end|>. TRL is given the prompt already rendered by the same chat template and the completion
followed by the tokenizer's EOS (<|im_end|>), so it trains on the same ids (`tokens_*` and
`target_tokens_*` in the JSON confirm it).

Packing: alignlab packs each micro-batch of `--batch-size` sequences into rows as long as its
longest sequence; TRL packs the whole dataset best-fit-decreasing into bins of `max_length` tokens
and takes one bin per step. TRL's bin length is `--batch-size` times the mean example length (in
tokens, computed from the data), so that a step of either side holds about the same tokens; both
step counts are reported.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import add_runner_args, load_pair_data, peak_rss_mb, publish, run_sides, run_worker, worker_setup
SIDES = ("alignlab", "trl")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sft_vs_trl.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M-Instruct) or a save_pretrained folder")
    p.add_argument("--examples", type=int, default=128, help="synthetic prompt/completion examples (one epoch)")
    p.add_argument("--batch-size", type=int, default=8, help="alignlab: sequences per step (TRL: one bin of about as many tokens)")
    p.add_argument("--max-length", type=int, default=192, help="max tokens of prompt + completion")
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of both trainers")
    p.add_argument("--only", choices=SIDES, help="run one side only")
    add_runner_args(p, SIDES, DEFAULT_OUT)
    # load_pair_data reads args.pairs
    args = p.parse_args(argv)
    args.pairs = args.examples
    return args


def sft_rows(tokenizer, pairs) -> list[dict]:
    """Text rows for TRL that tokenize to alignlab's ids: the chat-rendered prompt, the completion
    followed by EOS (SmolLM2: <|im_end|>, which alignlab appends to every completion)."""
    return [{"prompt": tokenizer.apply_chat_template([{"role": "user", "content": p.prompt}], tokenize=False,
                                                     add_generation_prompt=True),
             "completion": p.chosen + tokenizer.eos_token} for p in pairs]


def run_alignlab(args) -> dict:
    from alignlab.train.sft import SFTConfig, train_sft

    _, tokenizer, pairs = load_pair_data(args)
    records = [([{"role": "user", "content": p.prompt}], p.chosen) for p in pairs]
    with tempfile.TemporaryDirectory(prefix="bench-alignlab-") as tmp:
        cfg = SFTConfig(model=args.model, output_dir=tmp, batch_size=args.batch_size, epochs=1.0,
                        learning_rate=args.learning_rate, max_length=args.max_length, truncation="truncate",
                        warmup_ratio=0.0, lr_schedule="linear", packing=True, progress=False, seed=args.seed)
        start = time.perf_counter()
        session = train_sft(cfg, train_records=records, tokenizer=tokenizer)
        wall = time.perf_counter() - start
    s = session.summary
    losses = [row["loss"] for row in session.state.history if "loss" in row and "eval/loss" not in row]
    return side_result(s["train_seconds"], wall, losses, s["input_tokens"], s["target_tokens"],
                       worker_setup(tokenizer, pairs))


def run_trl(args) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from alignlab.data.tokenize import encode_prompt_response

    model_path, tokenizer, pairs = load_pair_data(args)
    lengths = [sum(map(len, encode_prompt_response(tokenizer, [{"role": "user", "content": p.prompt}], p.chosen)))
               for p in pairs]
    bin_length = max(max(min(n, args.max_length) for n in lengths), round(args.batch_size * sum(lengths) / len(lengths)))
    overrides = {"gradient_checkpointing": False} if args.trl_no_gradient_checkpointing else {}
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        config = SFTConfig(
            output_dir=tmp, per_device_train_batch_size=1, num_train_epochs=1, learning_rate=args.learning_rate,
            max_length=bin_length, packing=True, seed=args.seed, lr_scheduler_type="linear", warmup_steps=0,
            bf16=False, model_init_kwargs={"dtype": "float32"},  # fp32 (TRL defaults to bf16)
            report_to="none", save_strategy="no", logging_steps=1, **overrides,
        )
        trainer = SFTTrainer(model=model_path, args=config, processing_class=tokenizer,
                             train_dataset=Dataset.from_list(sft_rows(tokenizer, pairs)))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    data = trainer.train_dataset
    tokens = sum(sum(x) for x in data["seq_lengths"])
    # the collator also masks each sequence's first token (nothing predicts it), as alignlab does
    targets = sum(sum(1 for t in labels if t != -100) for labels in data["labels"])
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return side_result(seconds, seconds, losses, tokens, targets, worker_setup(tokenizer, pairs),
                       bin_length=bin_length)


def side_result(seconds: float, wall: float, losses: list[float], tokens: int, targets: int, setup: dict,
                **extra) -> dict:
    return {
        "tokens_per_s": tokens / seconds,
        "target_tokens_per_s": targets / seconds,
        "peak_rss_mb": peak_rss_mb(),
        "final_mean_loss": sum(losses) / len(losses),
        "seconds": seconds,
        "wall_seconds": wall,  # the whole call: loading, tokenizing, training (and alignlab's final save)
        "steps": len(losses),
        "tokens": tokens,
        "target_tokens": targets,
        "step_losses": [round(x, 6) for x in losses],
        **extra,
        "_setup": setup,
    }


def compare(results: dict[str, dict]) -> dict:
    a, t = results["alignlab"], results["trl"]
    return {
        "speedup": a["tokens_per_s"] / t["tokens_per_s"],
        "loss_rel_diff": abs(a["final_mean_loss"] - t["final_mean_loss"]) / abs(t["final_mean_loss"]),
        "same_tokens": a["tokens"] == t["tokens"],
        "target_tokens_diff": a["target_tokens"] - t["target_tokens"],
    }


def worker_argv(args) -> list[str]:
    argv = ["--model", args.model, "--examples", str(args.examples), "--batch-size", str(args.batch_size),
            "--max-length", str(args.max_length), "--learning-rate", repr(args.learning_rate), "--seed", str(args.seed)]
    return argv + (["--trl-no-gradient-checkpointing"] if args.trl_no_gradient_checkpointing else [])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args, lambda a: {"alignlab": run_alignlab, "trl": run_trl}[a.worker](a))
    sides = [args.only] if args.only else list(SIDES)
    results, report = run_sides(__file__, sides, worker_argv(args))
    if len(sides) == 2:
        report.update(compare(results))
    report["setup"] = {"model": args.model, "examples": args.examples, "batch_size": args.batch_size,
                       "max_length": args.max_length, "learning_rate": args.learning_rate, "seed": args.seed,
                       "epochs": 1, "precision": "fp32", "device": "cpu", "packing": "both sides",
                       "trl_gradient_checkpointing": not args.trl_no_gradient_checkpointing,
                       **results[sides[0]]["_setup"]}
    return publish(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
