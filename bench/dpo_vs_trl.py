"""DPO training throughput and memory: alignlab vs TRL's DPOTrainer, same model, data and settings.

Both sides train the same model (fp32, CPU) on the same synthetic preference pairs for one epoch
with DPO (sigmoid loss, beta 0.1), full fine-tuning, batch size 4, the same learning rate and a
linear schedule without warmup. TRL runs at its defaults except for what running on CPU in fp32
without saving needs (bf16 off, no checkpoints, no reporting) and the shared settings above;
per-step logging is on so that its mean loss can be compared. Each side runs in a subprocess of
its own, so its peak RSS is its own. Prints one JSON line and writes it to --out.

    python bench/dpo_vs_trl.py                    # the full benchmark (see bench/README.md)
    python bench/dpo_vs_trl.py --model DIR --pairs 8 --only trl

Token ids: alignlab builds a pair as chat-template(prompt, generation prompt) + response +
<|im_end|>. TRL tokenizes plain-text data itself, so by default (--trl-format text) it is given the
prompt already rendered by the same chat template and each response followed by the tokenizer's
EOS (<|im_end|> for SmolLM2): it then produces exactly alignlab's ids, which the JSON confirms
(`token_ids_identical`). With --trl-format conversational TRL renders the messages itself and each
response gains the template's trailing newline after <|im_end|>: one more token per response.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

from common import (add_runner_args, chat_text_rows, load_pair_data, peak_rss_mb, publish, run_sides, run_worker,
                    worker_setup)

SIDES = ("alignlab", "trl")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "dpo_vs_trl.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M-Instruct) or a save_pretrained folder")
    p.add_argument("--pairs", type=int, default=64, help="synthetic preference pairs (one epoch over them)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=192, help="max tokens of prompt + response")
    p.add_argument("--learning-rate", type=float, default=1e-6)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of both trainers")
    p.add_argument("--only", choices=SIDES, help="run one side only")
    p.add_argument("--trl-format", choices=("text", "conversational"), default="text",
                   help="text: TRL gets the chat-rendered prompt, so its token ids equal alignlab's; "
                        "conversational: TRL renders the messages itself (+1 token per response)")
    add_runner_args(p, SIDES, DEFAULT_OUT)
    return p.parse_args(argv)


def run_alignlab(args) -> dict:

    from safetensors.torch import load_file

    from alignlab.data.records import PairwiseRecord
    from alignlab.train.dpo import DPOConfig, train_dpo

    _, tokenizer, pairs = load_pair_data(args)
    records = [PairwiseRecord(prompt=[{"role": "user", "content": p.prompt}], chosen=p.chosen, rejected=p.rejected)
               for p in pairs]
    with tempfile.TemporaryDirectory(prefix="bench-alignlab-") as tmp:
        cfg = DPOConfig(model=args.model, output_dir=tmp, batch_size=args.batch_size, epochs=1.0,
                        learning_rate=args.learning_rate, beta=args.beta, max_length=args.max_length,
                        truncation="truncate", warmup_ratio=0.0, lr_schedule="linear",  # TRL's default schedule
                        progress=False, seed=args.seed)
        start = time.perf_counter()
        session = train_dpo(cfg, train_records=records, tokenizer=tokenizer)
        wall = time.perf_counter() - start
        reference = load_file(session.run_dir / "reference_logps.safetensors")["train"]
    # The reference pass is real work that TRL does inside its steps: it counts.
    seconds = session.summary["train_seconds"] + session.summary.get("reference_seconds", 0.0)
    losses = [row["loss"] for row in session.state.history if "loss" in row]
    if [p.index for p in session.train_examples] != list(range(len(pairs))):  # ids are compared pair by pair
        raise RuntimeError("alignlab dropped or reordered pairs while encoding; the sides cannot be compared")
    ids = [[p.prompt_ids, p.chosen_ids, p.rejected_ids] for p in session.train_examples]
    return side_result(args, seconds, wall, losses, ids, reference.tolist(), worker_setup(tokenizer, pairs),
                       reference_seconds=session.summary.get("reference_seconds", 0.0),
                       step_seconds=session.summary["train_seconds"])


def trl_rows(tokenizer, pairs, fmt: str) -> list[dict]:
    if fmt == "conversational":
        return [{"prompt": [{"role": "user", "content": p.prompt}],
                 "chosen": [{"role": "assistant", "content": p.chosen}],
                 "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]
    return chat_text_rows(tokenizer, pairs)


def run_trl(args) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model_path, tokenizer, pairs = load_pair_data(args)
    overrides = {"gradient_checkpointing": False} if args.trl_no_gradient_checkpointing else {}
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        config = DPOConfig(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, num_train_epochs=1,
            learning_rate=args.learning_rate, beta=args.beta, max_length=args.max_length, seed=args.seed,
            bf16=False, model_init_kwargs={"dtype": "float32"},  # fp32 (TRL defaults to bf16)
            report_to="none", save_strategy="no", logging_steps=1, **overrides,
        )
        trainer = DPOTrainer(model=model_path, args=config, processing_class=tokenizer,
                             train_dataset=Dataset.from_list(trl_rows(tokenizer, pairs, args.trl_format)))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        reference = trl_reference_logps(trainer, args.batch_size)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    data = trainer.train_dataset
    if len(data) != len(pairs):
        raise RuntimeError("TRL dropped pairs (prompt longer than max_length); the sides cannot be compared")
    ids = [truncate_like_trl(p, c, r, args.max_length)
           for p, c, r in zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"])]
    return side_result(args, seconds, seconds, losses, ids, reference, worker_setup(tokenizer, pairs))


def truncate_like_trl(prompt: list[int], chosen: list[int], rejected: list[int], max_length: int) -> list[list[int]]:
    """The ids TRL's collator actually trains on: prompt + response cut to `max_length` from the end."""
    room = max(max_length - len(prompt), 0)
    return [prompt[:max_length], chosen[:room], rejected[:room]]


def trl_reference_logps(trainer, batch_size: int) -> list[list[float]]:
    """(N, 2) reference log-probs [chosen, rejected] per pair, in data order, from TRL's own
    reference path; computed after training and outside the timing, only to compare with alignlab."""
    import torch

    data = trainer.train_dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
    out = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = trainer.data_collator([data[i] for i in range(start, min(start + batch_size, len(data)))])
            batch = {k: v.to(trainer.accelerator.device) for k, v in batch.items()}
            chosen, rejected = trainer.compute_ref_log_probs(trainer.ref_model, batch)
            out.extend(zip(chosen.tolist(), rejected.tolist()))
    return [list(row) for row in out]


def side_result(args, seconds: float, wall: float, losses: list[float], ids, reference, setup: dict,
                **extra) -> dict:
    return {
        "pairs_per_s": args.pairs / seconds,
        "peak_rss_mb": peak_rss_mb(),
        "final_mean_loss": sum(losses) / len(losses),
        "seconds": seconds,
        "wall_seconds": wall,  # the whole call: loading, tokenizing, training (and alignlab's final save)
        "steps": len(losses),
        "step_losses": [round(x, 6) for x in losses],
        **extra,
        "_ids": ids,
        "_reference_logps": reference,
        "_setup": setup,
    }


def compare(results: dict[str, dict]) -> dict:
    """Cross-side checks: same token ids, same reference log-probs, same mean loss."""
    a, t = results["alignlab"], results["trl"]
    tokens = {side: sum(len(x) for pair in r["_ids"] for x in pair) for side, r in results.items()}
    differing = sum(x != y for x, y in zip(a["_ids"], t["_ids"])) + abs(len(a["_ids"]) - len(t["_ids"]))
    ref_diff = [abs(x - y) / max(abs(y), 1e-9) for ra, rt in zip(a["_reference_logps"], t["_reference_logps"])
                for x, y in zip(ra, rt)]
    return {
        "speedup": a["pairs_per_s"] / t["pairs_per_s"],
        "loss_rel_diff": abs(a["final_mean_loss"] - t["final_mean_loss"]) / abs(t["final_mean_loss"]),
        # Step by step only meaningful when both drew the same data order (they do for seed 0).
        "step_losses_max_abs_diff": max(abs(x - y) for x, y in zip(a["step_losses"], t["step_losses"])),
        "tokens_alignlab": tokens["alignlab"],
        "tokens_trl": tokens["trl"],
        "tokens_per_pair_diff": (tokens["trl"] - tokens["alignlab"]) / max(len(t["_ids"]), 1),
        "token_ids_identical": differing == 0,
        "pairs_with_different_ids": differing,
        "reference_logps_max_rel_diff": max(ref_diff) if ref_diff else math.nan,
    }


def setup_info(args, side_setup: dict) -> dict:
    return {
        "model": args.model, "pairs": args.pairs, "batch_size": args.batch_size, "max_length": args.max_length,
        "learning_rate": args.learning_rate, "beta": args.beta, "seed": args.seed, "epochs": 1,
        "precision": "fp32", "device": "cpu", "trl_format": args.trl_format,
        "trl_gradient_checkpointing": not args.trl_no_gradient_checkpointing,
        **side_setup,
    }


def worker_argv(args) -> list[str]:
    argv = ["--model", args.model, "--pairs", str(args.pairs), "--batch-size", str(args.batch_size),
            "--max-length", str(args.max_length), "--learning-rate", repr(args.learning_rate),
            "--beta", repr(args.beta), "--seed", str(args.seed), "--trl-format", args.trl_format]
    return argv + (["--trl-no-gradient-checkpointing"] if args.trl_no_gradient_checkpointing else [])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args, lambda a: {"alignlab": run_alignlab, "trl": run_trl}[a.worker](a))
    sides = [args.only] if args.only else list(SIDES)
    results, report = run_sides(__file__, sides, worker_argv(args))
    if len(sides) == 2:
        report.update(compare(results))
    report["setup"] = setup_info(args, results[sides[0]]["_setup"])
    return publish(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
