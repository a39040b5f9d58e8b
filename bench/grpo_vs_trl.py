"""GRPO throughput (generation + training) and memory: alignlab vs TRL's GRPOTrainer, same model,
prompts, reward and settings.

Both sides train the same model (fp32, CPU, full fine-tuning) with GRPO for `--iterations` rounds:
each round samples `--samples` completions (up to `--max-new-tokens` tokens) for each of
`--prompts` chat prompts in one generation batch, scores them with the same cheap deterministic
Python reward (VADER compound sentiment of the completion text), and takes one optimizer step over
all of them (batch prompts x samples / 4, 4 accumulation steps). GRPO settings are TRL's defaults
where they matter: beta 0 (no reference model, no reference pass), token-mean loss over the batch
("dapo"), group-std reward scaling, clip epsilon 0.2, one pass per rollout, temperature 1, top-p 1,
top-k 0, a linear schedule without warmup, fused AdamW, gradient clipping at 1.0. TRL runs at its
defaults otherwise (gradient checkpointing on) except for what running on CPU in fp32 without
saving needs. Each side runs in a subprocess of its own, so its peak RSS is its own. Prints one
JSON line and writes it to --out.

    python bench/grpo_vs_trl.py                    # the full benchmark (see bench/README.md)
    python bench/grpo_vs_trl.py --model DIR --prompts 4 --max-new-tokens 8 --iterations 1 --only trl

Time split, measured without changing either trainer (observers only: wrapped calls whose results
pass through untouched). alignlab: its own rollout timers (time/generation, time/scoring,
time/reference_and_old in metrics.jsonl) and its step time (summary train_seconds). TRL: a timer
around the policy's `generate`, around the reward function, around its log-prob passes made
while building a rollout (old/reference policy; none with these settings) and around the whole
rollout (`_generate_and_score_completions`); training = the rest of `train()`.

The two sides sample different completions (different samplers and random streams), so rewards,
completion lengths and losses are compared as distributions (`*_same_range`), not step by step.
"""

from __future__ import annotations

import copy
import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from common import add_runner_args, peak_rss_mb, publish, run_sides, run_worker, sentiment_prompts
SIDES = ("alignlab", "trl")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "grpo_vs_trl.json"
SAME_RANGE_Z = 3.0  # |difference of means| / its standard error below this: the same range


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M-Instruct) or a save_pretrained folder")
    p.add_argument("--prompts", type=int, default=16, help="prompts per iteration (each used once in the run)")
    p.add_argument("--samples", type=int, default=4, help="completions per prompt (the GRPO group size)")
    p.add_argument("--iterations", type=int, default=2, help="generation rounds = optimizer steps")
    p.add_argument("--max-new-tokens", type=int, default=32, help="completion length limit")
    p.add_argument("--grad-accum", type=int, default=4,
                   help="micro-batches per optimizer step (batch size = prompts x samples / this)")
    p.add_argument("--learning-rate", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts and of both trainers")
    p.add_argument("--only", choices=SIDES, help="run one side only")
    p.add_argument("--rollout-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="alignlab's rollout_dtype (bfloat16: a bf16 copy samples; TRL's side is unchanged, fp32)")
    add_runner_args(p, SIDES, DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.samples < 2:
        p.error("--samples must be >= 2 (GRPO's group baseline)")
    if min(args.prompts, args.iterations, args.max_new_tokens, args.grad_accum) < 1:
        p.error("--prompts, --iterations, --max-new-tokens and --grad-accum must be >= 1")
    if (args.prompts * args.samples) % args.grad_accum:
        p.error("prompts x samples must be divisible by --grad-accum (the per-step batch is split evenly)")
    return args


def batch_size(args) -> int:
    """Completions per micro-batch: one optimizer step covers one rollout (prompts x samples)."""
    return args.prompts * args.samples // args.grad_accum


def run_prompts(args) -> list[list[dict[str, str]]]:
    """prompts x iterations distinct chat prompts: each side goes through all of them once, each in
    its own order (so an iteration's prompts differ between the sides, the run's do not)."""
    return sentiment_prompts(args.prompts * args.iterations, seed=args.seed)


# -- observers (timers that change nothing) ----------------------------------------------------


class RewardWatch:
    """The benchmark's reward on both sides: VADER compound sentiment of each completion text
    (alignlab.lab.sentiment.vader_compound, in [-1, 1]); timed, every call's scores recorded."""

    def __init__(self):
        self.seconds = 0.0
        self.calls: list[list[float]] = []

    def __call__(self, texts: list[str]) -> list[float]:
        from alignlab.lab.sentiment import vader_compound

        start = time.perf_counter()
        scores = vader_compound(list(texts)).tolist()
        self.seconds += time.perf_counter() - start
        self.calls.append(scores)
        return scores


class GenerateWatch:
    """Replaces `model.generate` (an instance attribute over the class method) with a timed call
    of the original, and records what every call generated: rows, each row's prompt ids (the
    attention mask's tokens), its completion length (through the first EOS, EOS included) and
    whether it was truncated (no EOS within the limit). Same definitions on both sides."""

    def __init__(self, model, eos_ids: list[int]):
        self.inner, self.eos_ids = model.generate, eos_ids
        self.seconds = 0.0
        self.rows: list[int] = []  # rows per generate call
        self.prompt_ids: list[list[int]] = []
        self.lengths: list[int] = []
        self.truncated: list[bool] = []
        self.owner = self  # where calls are recorded: a copy of the model (rollout_dtype) records here too
        model.generate = self

    def __deepcopy__(self, memo):
        """A deep copy of the watched model (alignlab's bf16 rollout copy) keeps a watch on the copy's
        own `generate` that records into this one."""
        clone = copy.copy(self)
        clone.inner = copy.deepcopy(self.inner, memo)  # bound to the model's copy
        return clone

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.owner.seconds += time.perf_counter() - start
        self.owner._record(kwargs["input_ids"] if "input_ids" in kwargs else args[0], kwargs.get("attention_mask"),
                           out)
        return out

    def _record(self, input_ids, attention_mask, out) -> None:
        import torch

        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        input_ids = input_ids.cpu()
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.cpu().bool()
        new = sequences[:, input_ids.shape[1]:].cpu()
        is_eos = torch.isin(new, torch.tensor(self.eos_ids))
        self.rows.append(len(sequences))
        for i in range(len(sequences)):
            self.prompt_ids.append(input_ids[i][mask[i]].tolist())
            hits = is_eos[i].nonzero()
            self.lengths.append(int(hits[0, 0]) + 1 if len(hits) else new.shape[1])
            self.truncated.append(len(hits) == 0)


def eos_ids(model, tokenizer) -> list[int]:
    """The ids that end a completion on both sides: the tokenizer's EOS and the model's
    generation-config EOS ids (alignlab's HFGenerator and TRL's GRPOTrainer both use this union)."""
    ids = [tokenizer.eos_token_id]
    extra = getattr(model.generation_config, "eos_token_id", None)
    ids += extra if isinstance(extra, (list, tuple)) else [extra]
    return sorted({int(i) for i in ids if i is not None})


def watch_alignlab_saves() -> dict:
    """alignlab always saves at the end of a run (a checkpoint with the optimizer state, and the
    final model); TRL runs with save_strategy="no". Time both saves, to leave them out."""
    from alignlab.train import loop
    from alignlab.train.online import trainer as online

    seen = {"seconds": 0.0}

    def timed(fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seen["seconds"] += time.perf_counter() - start
        return wrapper

    loop._save = timed(loop._save)  # looked up at call time by train_loop
    online.save_final = timed(online.save_final)  # looked up at call time by train_online
    return seen


class TRLRolloutWatch:
    """Times TRL's rollout (`_generate_and_score_completions`: tokenizing, generation, decoding,
    rewards, old/reference log-prob passes, advantages) and the log-prob passes made inside it;
    both are instance attributes over the class methods, called through `self.` by the trainer."""

    def __init__(self, trainer):
        self.rollout_seconds = self.pass_seconds = 0.0
        self.passes = 0
        self._in_rollout = False
        rollout, logps = trainer._generate_and_score_completions, trainer._get_per_token_logps_and_entropies

        def timed_rollout(*args, **kwargs):
            start, self._in_rollout = time.perf_counter(), True
            try:
                return rollout(*args, **kwargs)
            finally:
                self._in_rollout = False
                self.rollout_seconds += time.perf_counter() - start

        def timed_logps(*args, **kwargs):
            if not self._in_rollout:  # the training forward
                return logps(*args, **kwargs)
            start = time.perf_counter()
            try:
                return logps(*args, **kwargs)
            finally:
                self.pass_seconds += time.perf_counter() - start
                self.passes += 1

        trainer._generate_and_score_completions = timed_rollout
        trainer._get_per_token_logps_and_entropies = timed_logps


# -- the two sides ------------------------------------------------------------------------------


def alignlab_flags(args, output_dir: str) -> dict:
    return dict(
        model=args.model, output_dir=output_dir, seed=args.seed, progress=False, precision="fp32",
        prompts_per_step=args.prompts, samples_per_prompt=args.samples, iterations=args.iterations,
        max_new_tokens=args.max_new_tokens, rollout_batch_size=args.prompts * args.samples,  # all at once
        batch_size=batch_size(args), grad_accum=args.grad_accum,
        kl_coef=0.0,  # TRL's beta 0: no reference model, no reference pass
        loss_reduction="token_mean", scale_rewards=True, clip_low=0.2, clip_high=0.0, ppo_epochs=1,
        temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=args.learning_rate, lr_schedule="linear", warmup_ratio=0.0, weight_decay=0.0,
        max_grad_norm=1.0, gradient_checkpointing=False, rollout_dtype=args.rollout_dtype,
    )


@dataclasses.dataclass
class OnlineRun:
    """One timed alignlab online run of the benchmark (`run_online`)."""

    summary: dict
    cfg: object
    model: object
    setup: dict
    generate: GenerateWatch
    reward: RewardWatch
    save_seconds: float
    wall: float
    steps: list[dict]
    """The logged rows of the optimizer steps."""
    rollouts: list[dict]
    """One logged row per iteration (every step row repeats its rollout's metrics)."""

    @property
    def seconds(self) -> float:
        return self.wall - self.save_seconds


def run_online(args, method: str, flags) -> OnlineRun:
    """alignlab's `method` on the benchmark's prompts and reward, timed around `train_online` alone
    (the model is loaded before, as TRL loads in its constructor); `flags(args, output_dir)`."""
    from alignlab.data.tokenize import encode_prompt
    from alignlab.models.load import load_policy, load_tokenizer
    from alignlab.rewards.base import FunctionReward
    from alignlab.train.online import resolve_online, train_online

    prompts = run_prompts(args)
    tokenizer = load_tokenizer(args.model)
    model = load_policy(args.model)
    generate = GenerateWatch(model, eos_ids(model, tokenizer))
    reward = RewardWatch()
    saves = watch_alignlab_saves()
    with tempfile.TemporaryDirectory(prefix="bench-alignlab-") as tmp:
        cfg = resolve_online(method, flags=flags(args, tmp))
        start = time.perf_counter()
        summary = train_online(cfg, model=model, tokenizer=tokenizer, train_rows=[{"prompt": p} for p in prompts],
                               eval_rows=[], rewards=FunctionReward(reward, name="vader", responses_only=True)).summary
        wall = time.perf_counter() - start
        logged = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()
                  if line.strip()]
    steps = [row for row in logged if "loss" in row]
    per_iteration: dict[int, dict] = {}
    for row in steps:
        per_iteration.setdefault(row["epoch"], row)
    return OnlineRun(summary, cfg, model, worker_setup(tokenizer, [encode_prompt(tokenizer, p) for p in prompts]),
                     generate, reward, saves["seconds"], wall, steps, [per_iteration[k] for k in sorted(per_iteration)])


def run_alignlab(args) -> dict:
    run = run_online(args, "grpo", alignlab_flags)
    rollouts = run.rollouts
    split = {
        "generation": sum(r["rollout/time/generation"] for r in rollouts),
        "scoring": sum(r["rollout/time/scoring"] for r in rollouts),
        "reference_and_old_passes": sum(r["rollout/time/reference_and_old"] for r in rollouts),
        "training": run.summary["train_seconds"],
    }
    split["other"] = run.seconds - sum(split.values())  # rollout bookkeeping, micro-batches, optimizer set-up
    return side_result(
        args, run.summary["completions"], run.seconds, run.wall, split, [row["loss"] for row in run.steps],
        run.generate, run.reward,
        logged_rewards=[r["rollout/reward/mean"] for r in rollouts],
        logged_lengths=[r["rollout/response_length"] for r in rollouts],
        logged_truncated=[r["rollout/truncated_share"] for r in rollouts],
        setup=run.setup, save_seconds=run.save_seconds, gradient_checkpointing=run.cfg.gradient_checkpointing,
        attn_implementation=run.model.config._attn_implementation,
    )


def trl_reward(watch: RewardWatch):
    """TRL's reward-function signature around the same reward: completions arrive as
    [{"role": "assistant", "content": text}] for chat prompts (text decoded without special tokens,
    as alignlab decodes), plain strings otherwise."""

    def vader_sentiment(completions, **kwargs) -> list[float]:
        return watch([c if isinstance(c, str) else c[-1]["content"] for c in completions])

    return vader_sentiment


def run_trl(args) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from alignlab.models.load import resolve_model_path

    prompts = run_prompts(args)
    model_path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)  # what TRL would load itself (AutoProcessor)
    reward = RewardWatch()
    overrides = {"gradient_checkpointing": False} if args.trl_no_gradient_checkpointing else {}
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        config = GRPOConfig(
            output_dir=tmp, seed=args.seed, max_steps=args.iterations,  # one optimizer step per generation round
            per_device_train_batch_size=batch_size(args), gradient_accumulation_steps=args.grad_accum,
            num_generations=args.samples, max_completion_length=args.max_new_tokens,
            # generation_batch_size: its default, per_device_train_batch_size x gradient_accumulation_steps
            # = prompts x samples, generated in one `generate` call
            learning_rate=args.learning_rate, lr_scheduler_type="linear", max_grad_norm=1.0,
            # TRL's defaults, spelled out: what the alignlab side is set to
            beta=0.0, loss_type="dapo", scale_rewards="group", epsilon=0.2, num_iterations=1,
            temperature=1.0, top_p=1.0, top_k=0,
            bf16=False, model_init_kwargs={"dtype": "float32"},  # fp32 (TRL defaults to bf16)
            report_to="none", save_strategy="no", logging_steps=1, **overrides,
        )
        trainer = GRPOTrainer(model=model_path, args=config, processing_class=tokenizer,
                              reward_funcs=trl_reward(reward),
                              train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))
        generate = GenerateWatch(trainer.model, trainer.eos_token_ids)
        rollout = TRLRolloutWatch(trainer)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    steps = [row for row in trainer.state.log_history if "loss" in row]
    split = {
        "generation": generate.seconds,
        "scoring": reward.seconds,
        "reference_and_old_passes": rollout.pass_seconds,
        "training": seconds - rollout.rollout_seconds,  # everything in train() outside the rollouts
    }
    split["other"] = rollout.rollout_seconds - split["generation"] - split["scoring"] - split["reference_and_old_passes"]
    return side_result(
        args, len(generate.prompt_ids), seconds, seconds, split, [row["loss"] for row in steps], generate, reward,
        logged_rewards=[row["reward"] for row in steps],
        logged_lengths=[row["completions/mean_length"] for row in steps],
        logged_truncated=[row["completions/clipped_ratio"] for row in steps],
        setup=worker_setup(tokenizer, trainer._tokenize_prompts(prompts)[0]),  # untimed, after training
        rollout_logprob_passes=rollout.passes, gradient_checkpointing=trainer.args.gradient_checkpointing,
        attn_implementation=trainer.model.config._attn_implementation,
        optim=getattr(trainer.args.optim, "value", str(trainer.args.optim)),
        pad_token=tokenizer.pad_token, eos_token_ids=trainer.eos_token_ids,
    )


def side_result(args, completions: int, seconds: float, wall: float, split: dict, losses: list[float],
                generate: GenerateWatch, reward: RewardWatch, *, logged_rewards, logged_lengths, logged_truncated,
                setup: dict, **extra) -> dict:
    scores = [s for call in reward.calls for s in call]
    return {
        "completions": completions,
        "completions_per_s": completions / seconds,
        "seconds": seconds,  # the training call without model loading (and without alignlab's final saves)
        "time_split": split,
        "peak_rss_mb": peak_rss_mb(),
        "steps": len(losses),
        "step_losses": losses,
        "mean_reward_per_iteration": [sum(c) / len(c) for c in reward.calls],
        "mean_reward": sum(scores) / len(scores),
        # as the trainer logs them, one value per iteration (alignlab: rollout/response_length and
        # rollout/truncated_share; TRL: completions/mean_length and completions/clipped_ratio)
        "mean_completion_tokens_per_iteration": logged_lengths,
        "truncated_share_per_iteration": logged_truncated,
        "mean_completion_tokens": sum(logged_lengths) / len(logged_lengths),
        "truncated_share": sum(logged_truncated) / len(logged_truncated),
        "logged_mean_reward_per_iteration": logged_rewards,
        # the same, observed at the policy's `generate` (identical definitions on both sides)
        "observed_mean_completion_tokens": sum(generate.lengths) / len(generate.lengths),
        "observed_truncated_share": sum(generate.truncated) / len(generate.truncated),
        "generate_calls": generate.rows,  # rows per call
        "generate_call_seconds": generate.seconds,
        "reward_fn_seconds": reward.seconds,
        "reward_calls": len(reward.calls),
        "wall_seconds": wall,
        **extra,
        "_rewards": scores,
        "_lengths": generate.lengths,
        "_prompt_ids": sorted(generate.prompt_ids),
        "_setup": setup,
    }


def worker_setup(tokenizer, prompt_ids: list[list[int]]) -> dict:
    """Facts a worker records about its process and data (versions from package metadata:
    importing trl would add to alignlab's peak memory)."""
    from importlib.metadata import version

    import torch

    lengths = [len(p) for p in prompt_ids]
    return {
        "torch_threads": torch.get_num_threads(),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "prompt_tokens": {"min": min(lengths), "mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths)},
        "versions": {name: version(name) for name in ("torch", "transformers", "trl", "vaderSentiment")},
    }


# -- the comparison -----------------------------------------------------------------------------


def mean_diff_z(a: list[float], b: list[float]) -> float:
    """(mean a - mean b) / its standard error (unequal variances): a rough same-distribution check."""
    def moments(x):
        m = sum(x) / len(x)
        return m, sum((v - m) ** 2 for v in x) / max(len(x) - 1, 1) / len(x)

    (ma, va), (mb, vb) = moments(a), moments(b)
    if va + vb == 0:
        return 0.0 if ma == mb else math.inf
    return (ma - mb) / math.sqrt(va + vb)


def compare(args, a: dict, t: dict) -> dict:
    reward_z = mean_diff_z(a["_rewards"], t["_rewards"])
    length_z = mean_diff_z([float(x) for x in a["_lengths"]], [float(x) for x in t["_lengths"]])
    # On policy (one pass, ratio 1) a token-mean GRPO loss is minus a token-weighted mean of
    # advantages, so its size is at most the largest advantage a group can give: (n - 1) / sqrt(n).
    loss_bound = (args.samples - 1) / math.sqrt(args.samples)
    return {
        "speedup": a["completions_per_s"] / t["completions_per_s"],
        "memory_ratio": a["peak_rss_mb"] / t["peak_rss_mb"],
        "prompt_ids_identical": a["_prompt_ids"] == t["_prompt_ids"],
        "prompt_tokens_alignlab": sum(map(len, a["_prompt_ids"])),
        "prompt_tokens_trl": sum(map(len, t["_prompt_ids"])),
        "mean_reward_diff": a["mean_reward"] - t["mean_reward"],
        "mean_reward_diff_z": reward_z,
        "rewards_same_range": abs(reward_z) < SAME_RANGE_Z,
        "mean_completion_tokens_diff_z": length_z,
        "completion_lengths_same_range": abs(length_z) < SAME_RANGE_Z,
        "loss_bound": loss_bound,
        "losses_within_bound": all(math.isfinite(x) and abs(x) <= loss_bound + 1e-6
                                   for x in a["step_losses"] + t["step_losses"]),
    }


NOTE = ("The two sides sample different completions (alignlab: its own sampler with a private seeded "
        "generator; TRL: transformers' multinomial sampling on the global RNG) and visit the prompts in "
        "different orders, so rewards, completion lengths and losses are compared as distributions "
        f"(|z| < {SAME_RANGE_Z:g} on the difference of the means), not step by step.")


def setup_info(args, side_setup: dict) -> dict:
    return {
        "model": args.model, "prompts_per_iteration": args.prompts, "samples_per_prompt": args.samples,
        "iterations": args.iterations, "max_new_tokens": args.max_new_tokens,
        "completions_per_step": args.prompts * args.samples, "batch_size": batch_size(args),
        "grad_accum": args.grad_accum, "learning_rate": args.learning_rate, "seed": args.seed,
        "precision": "fp32", "device": "cpu", "reward": "VADER compound sentiment of the completion text",
        "grpo": "beta 0, token-mean loss (dapo), group std scaling, epsilon 0.2, one pass, temperature 1, "
                "top_p 1, top_k 0, linear schedule, no warmup, fused AdamW, max_grad_norm 1.0",
        "trl_gradient_checkpointing": not args.trl_no_gradient_checkpointing,
        "alignlab_rollout_dtype": args.rollout_dtype,
        **side_setup,
    }


def worker_argv(args) -> list[str]:
    argv = ["--model", args.model, "--prompts", str(args.prompts), "--samples", str(args.samples),
            "--iterations", str(args.iterations), "--max-new-tokens", str(args.max_new_tokens),
            "--grad-accum", str(args.grad_accum), "--learning-rate", repr(args.learning_rate), "--seed", str(args.seed),
            "--rollout-dtype", args.rollout_dtype]
    return argv + (["--trl-no-gradient-checkpointing"] if args.trl_no_gradient_checkpointing else [])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args, lambda a: run_alignlab(a) if a.worker == "alignlab" else run_trl(a))
    sides = (args.only,) if args.only else SIDES
    results, report = run_sides(__file__, sides, worker_argv(args))
    if len(results) == 2:
        report.update(compare(args, results["alignlab"], results["trl"]))
    report["note"] = NOTE
    report["setup"] = setup_info(args, results[sides[0]]["_setup"])
    return publish(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
