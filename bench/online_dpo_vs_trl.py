"""Online DPO throughput (generation + judging + training) and memory: alignlab vs TRL's
OnlineDPOTrainer (trl.experimental.online_dpo), same model, prompts, reward and settings.

Both sides train the same model (fp32, CPU, full fine-tuning) for `--iterations` rounds; each
round samples 2 completions (up to `--max-new-tokens` tokens) for each of `--prompts` chat
prompts, scores them with the same cheap deterministic Python reward (VADER compound sentiment of
the completion text), takes each prompt's higher-scored completion as chosen, and makes one
optimizer step of the sigmoid DPO loss (β 0.1) on those pairs against a frozen copy of the
initial policy, batch prompts / `--grad-accum` pairs over `--grad-accum` accumulation steps.
That is TRL's online DPO (2 completions a prompt, one step a round); alignlab runs it as
`train online-dpo` with samples_per_prompt 2, the reward judging through Bradley-Terry (hard
labels: the higher reward wins), ppo_epochs 1, reference_update fixed. Shared settings:
temperature 1, top-p 1, top-k 0, learning rate `--learning-rate` on a linear schedule without
warmup, AdamW, gradient clipping at 1.0. TRL runs at its defaults otherwise (gradient
checkpointing on) except for what running on CPU in fp32 without saving needs. Each side runs in
a subprocess of its own, so its peak RSS is its own. Prints one JSON line and writes it to --out.

    python bench/online_dpo_vs_trl.py                  # the full benchmark (see bench/README.md)
    python bench/online_dpo_vs_trl.py --model DIR --prompts 4 --max-new-tokens 8 --iterations 1 --only trl

Known differences, by design: alignlab drops a prompt whose two completions tie (same VADER
score: e.g. two neutral sentences, both 0) and trains on the remaining pairs (`ties_dropped`);
TRL keeps every prompt, the first completion counting as chosen on a tie. TRL generates per
micro-batch, alignlab all of a round's completions in one `generate` call.

Time split, measured without changing either trainer (observers only): generation (the policy's
`generate`), scoring (the reward function; alignlab: its scoring timer, which includes turning
rewards into labels), reference (alignlab: its reference log-prob pass per round, from its own
timer; TRL: its reference model's forwards, timed around `_forward` calls on `ref_model`),
training (alignlab: its step time; TRL: the rest of `train()`), other (alignlab: the rest).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import add_runner_args, peak_rss_mb, run_side, sentiment_prompts, write_json
from grpo_vs_trl import (SAME_RANGE_Z, GenerateWatch, RewardWatch, mean_diff_z, run_online, trl_reward,
                         worker_setup)

SIDES = ("alignlab", "trl")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "online_dpo_vs_trl.json"
SPLIT = ("generation", "scoring", "reference", "training", "other")
BETA = 0.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M-Instruct) or a save_pretrained folder")
    p.add_argument("--prompts", type=int, default=16, help="prompts per round (each used once in the run)")
    p.add_argument("--iterations", type=int, default=2, help="rounds of generate -> judge -> one optimizer step")
    p.add_argument("--max-new-tokens", type=int, default=32, help="completion length limit")
    p.add_argument("--grad-accum", type=int, default=4, help="micro-batches per optimizer step (batch = prompts / this)")
    p.add_argument("--learning-rate", type=float, default=5e-7)
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts and of both trainers")
    p.add_argument("--only", choices=SIDES, help="run one side only")
    add_runner_args(p, SIDES, DEFAULT_OUT)
    args = p.parse_args(argv)
    if min(args.prompts, args.iterations, args.max_new_tokens, args.grad_accum) < 1:
        p.error("--prompts, --iterations, --max-new-tokens and --grad-accum must be >= 1")
    if args.prompts % args.grad_accum:
        p.error("--prompts must be divisible by --grad-accum (the per-step batch is split evenly)")
    return args


def run_prompts(args) -> list[list[dict[str, str]]]:
    """prompts x iterations distinct chat prompts, each visited once by each side."""
    return sentiment_prompts(args.prompts * args.iterations, seed=args.seed)


def alignlab_flags(args, output_dir: str) -> dict:
    return dict(
        model=args.model, output_dir=output_dir, seed=args.seed, progress=False, precision="fp32",
        prompts_per_step=args.prompts, samples_per_prompt=2, iterations=args.iterations,
        max_new_tokens=args.max_new_tokens, rollout_batch_size=2 * args.prompts,  # all at once
        batch_size=2 * args.prompts // args.grad_accum,  # completions (2 a pair) per micro-batch
        grad_accum=args.grad_accum, ppo_epochs=1, kl_coef=BETA, preference_loss="dpo", reference_update="fixed",
        soft_labels=False, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=args.learning_rate, lr_schedule="linear", warmup_ratio=0.0, weight_decay=0.0,
        max_grad_norm=1.0, gradient_checkpointing=False,
    )


def run_alignlab(args) -> dict:
    run = run_online(args, "online-dpo", alignlab_flags)
    rollouts = run.rollouts
    split = {"generation": sum(r["rollout/time/generation"] for r in rollouts),
             "scoring": sum(r["rollout/time/scoring"] for r in rollouts),
             "reference": sum(r["rollout/time/reference_and_old"] for r in rollouts),
             "training": run.summary["train_seconds"]}
    split["other"] = run.seconds - sum(split.values())  # rollout bookkeeping, pair files, optimizer set-up
    return side_result(run.summary["completions"], run.seconds, run.wall, split, [row["loss"] for row in run.steps],
                       run.generate, run.reward, pairs=run.summary["pairs"], ties_dropped=run.summary["ties_dropped"],
                       setup=run.setup, save_seconds=run.save_seconds,
                       gradient_checkpointing=run.cfg.gradient_checkpointing)


def run_trl(args) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from alignlab.models.load import resolve_model_path

    prompts = run_prompts(args)
    model_path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    reward = RewardWatch()
    overrides = {"gradient_checkpointing": False} if args.trl_no_gradient_checkpointing else {}
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        config = OnlineDPOConfig(
            output_dir=tmp, seed=args.seed, max_steps=args.iterations,  # one optimizer step per round
            per_device_train_batch_size=args.prompts // args.grad_accum, gradient_accumulation_steps=args.grad_accum,
            max_new_tokens=args.max_new_tokens, learning_rate=args.learning_rate, lr_scheduler_type="linear",
            max_grad_norm=1.0, beta=[BETA], loss_type="sigmoid", temperature=1.0, top_p=1.0, top_k=0,
            bf16=False, model_init_kwargs={"dtype": "float32"},  # fp32 (TRL defaults to bf16)
            report_to="none", save_strategy="no", logging_steps=1, **overrides)
        trainer = OnlineDPOTrainer(model=model_path, reward_funcs=trl_reward(reward), args=config,
                                   processing_class=tokenizer,
                                   train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))
        generate = GenerateWatch(trainer.model, trainer.eos_token_ids)
        reference = watch_reference(trainer)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    steps = [row for row in trainer.state.log_history if "loss" in row]
    split = {"generation": generate.seconds, "scoring": reward.seconds, "reference": reference["seconds"]}
    split["training"] = seconds - sum(split.values())
    split["other"] = 0.0
    completions = len(generate.prompt_ids)
    return side_result(completions, seconds, seconds, split, [row["loss"] for row in steps], generate, reward,
                       pairs=completions // 2, ties_dropped=0,
                       setup=worker_setup(tokenizer, sorted({tuple(x) for x in generate.prompt_ids})),
                       gradient_checkpointing=trainer.args.gradient_checkpointing)


def watch_reference(trainer) -> dict:
    """Times TRL's reference-model forwards (`_forward(self.ref_model, ...)`: an instance attribute
    over the class method, called through `self.`)."""
    seen, inner = {"seconds": 0.0, "calls": 0}, trainer._forward

    def timed(model, *args, **kwargs):
        if model is not trainer.ref_model:
            return inner(model, *args, **kwargs)
        start = time.perf_counter()
        try:
            return inner(model, *args, **kwargs)
        finally:
            seen["seconds"] += time.perf_counter() - start
            seen["calls"] += 1

    trainer._forward = timed
    return seen


def side_result(completions: int, seconds: float, wall: float, split: dict, losses: list[float],
                generate: GenerateWatch, reward: RewardWatch, *, setup: dict, **extra) -> dict:
    scores = [s for call in reward.calls for s in call]
    return {
        "completions": completions,
        "completions_per_s": completions / seconds,
        "seconds": seconds,  # the training call without model loading (and without alignlab's final saves)
        "time_split": split,
        "peak_rss_mb": peak_rss_mb(),
        "steps": len(losses),
        "step_losses": losses,
        "mean_reward": sum(scores) / len(scores),
        "reward_calls": len(reward.calls),
        "generate_calls": generate.rows,  # rows per call
        "observed_mean_completion_tokens": sum(generate.lengths) / len(generate.lengths),
        "wall_seconds": wall,
        **extra,
        "_rewards": scores,
        "_lengths": generate.lengths,
        "_prompt_ids": sorted(generate.prompt_ids),
        "_setup": setup,
    }


def compare(a: dict, t: dict) -> dict:
    reward_z = mean_diff_z(a["_rewards"], t["_rewards"])
    length_z = mean_diff_z([float(x) for x in a["_lengths"]], [float(x) for x in t["_lengths"]])
    return {
        "speedup": a["completions_per_s"] / t["completions_per_s"],
        "memory_ratio": a["peak_rss_mb"] / t["peak_rss_mb"],
        # each prompt generated twice on both sides (TRL: one row per completion, alignlab: n per prompt)
        "prompt_ids_identical": a["_prompt_ids"] == t["_prompt_ids"],
        "mean_reward_diff_z": reward_z,
        "rewards_same_range": abs(reward_z) < SAME_RANGE_Z,
        "mean_completion_tokens_diff_z": length_z,
        "completion_lengths_same_range": abs(length_z) < SAME_RANGE_Z,
    }


NOTE = ("The two sides sample different completions (different samplers and random streams), so rewards and "
        f"completion lengths are compared as distributions (|z| < {SAME_RANGE_Z:g}); alignlab drops tied pairs "
        "(ties_dropped), TRL keeps them.")


def worker_argv(args) -> list[str]:
    argv = ["--model", args.model, "--prompts", str(args.prompts), "--iterations", str(args.iterations),
            "--max-new-tokens", str(args.max_new_tokens), "--grad-accum", str(args.grad_accum),
            "--learning-rate", repr(args.learning_rate), "--seed", str(args.seed)]
    return argv + (["--trl-no-gradient-checkpointing"] if args.trl_no_gradient_checkpointing else [])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = run_alignlab(args) if args.worker == "alignlab" else run_trl(args)
        Path(args.result_file).write_text(json.dumps(result))
        return 0
    sides = (args.only,) if args.only else SIDES
    results = {side: run_side(__file__, side, worker_argv(args), env={"CUDA_VISIBLE_DEVICES": ""}) for side in sides}
    report = {side: {k: v for k, v in r.items() if not k.startswith("_")} for side, r in results.items()}
    if len(results) == 2:
        report.update(compare(results["alignlab"], results["trl"]))
    report["note"] = NOTE
    report["setup"] = {"model": args.model, "prompts_per_iteration": args.prompts, "samples_per_prompt": 2,
                       "iterations": args.iterations, "max_new_tokens": args.max_new_tokens,
                       "batch_size_pairs": args.prompts // args.grad_accum, "grad_accum": args.grad_accum,
                       "learning_rate": args.learning_rate, "beta": BETA, "seed": args.seed, "precision": "fp32",
                       "device": "cpu", "reward": "VADER compound sentiment of the completion text",
                       "trl_gradient_checkpointing": not args.trl_no_gradient_checkpointing,
                       **results[sides[0]]["_setup"]}
    print(json.dumps(report), flush=True)
    write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
