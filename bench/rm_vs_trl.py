"""Reward-model training throughput and memory: alignlab vs TRL's RewardTrainer, same backbone,
data and settings; plus the cost of an alignlab ensemble of 4 members on one frozen backbone, as
heads and as LoRA adapters.

Both sides train the same backbone as a sequence classifier (one scalar reward read at the last
response token, <|im_end|>) on the same synthetic preference pairs for one epoch with the plain
Bradley-Terry loss -log sigmoid(r_chosen - r_rejected): fp32, CPU, full fine-tuning, batch size 4,
the same learning rate, a linear schedule without warmup, and the same initial reward head. TRL
runs at its defaults except for what running on CPU in fp32 without saving needs (bf16 off, no
checkpoints, no reporting), a pad token other than EOS, and the shared settings above; per-step
logging is on so that its mean loss can be compared. Each run is a subprocess of its own, so its
peak RSS is its own. Prints one JSON line and writes it to --out.

    python bench/rm_vs_trl.py                      # everything (see bench/README.md)
    python bench/rm_vs_trl.py --only ensemble      # alignlab: 4 heads vs 1 head, backbone frozen
    python bench/rm_vs_trl.py --only lora          # alignlab: 4 LoRA-adapter members vs 1 LoRA adapter,
                                                   # on every layer and on the top --lora-layers
    python bench/rm_vs_trl.py --model DIR --pairs 8 --only trl

Token ids: alignlab builds a sequence as chat-template(prompt, generation prompt) + response +
<|im_end|>. TRL is given text already in that form (common.chat_text_rows) and tokenizes
prompt + response as one string; the JSON confirms pair by pair that the ids are identical
(`token_ids_identical`).

Initial head: transformers draws a fresh `score.weight` for TRL, alignlab draws its own seeded
head. TRL's is overwritten, before training, by alignlab's head for the same seed (built by
alignlab's RewardModel on an empty backbone, so no second model is loaded in either process);
`initial_head_max_abs_diff` checks it. The backbones are the same checkpoint on both sides.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import (add_runner_args, chat_text_rows, load_pair_data, peak_rss_mb, publish, run_sides, run_worker,
                    worker_setup)

# alignlab runs: reward-model settings that differ between them (everything else is shared).
ALIGNLAB_RUNS = {
    "alignlab": {"ensemble": 1, "freeze_backbone": False},  # full fine-tuning: the TRL comparison
    # the same with gradient checkpointing, as TRL runs by default: the like-for-like memory comparison
    "alignlab_checkpointing": {"ensemble": 1, "freeze_backbone": False, "gradient_checkpointing": True},
    "alignlab_ensemble4_frozen": {"ensemble": 4, "freeze_backbone": True},
    "alignlab_single_frozen": {"ensemble": 1, "freeze_backbone": True},
    # members as LoRA adapters (each its own head) on one frozen backbone, vs one LoRA adapter
    "alignlab_ensemble4_lora": {"ensemble": 4, "ensemble_kind": "lora"},
    "alignlab_single_lora": {"ensemble": 1, "lora": True},
    # the same with adapters on the top --lora-layers layers only: the layers below run once per
    # batch for all members (a shared trunk), so 4 members should cost little more than one
    "alignlab_ensemble4_lora_top": {"ensemble": 4, "ensemble_kind": "lora"},
    "alignlab_single_lora_top": {"ensemble": 1, "lora": True},
}
SIDES = ("alignlab", "alignlab_checkpointing", "trl", "alignlab_ensemble4_frozen", "alignlab_single_frozen",
         "alignlab_ensemble4_lora", "alignlab_single_lora", "alignlab_ensemble4_lora_top", "alignlab_single_lora_top")
ONLY = {"alignlab": ("alignlab", "alignlab_checkpointing"), "trl": ("trl",),
        "ensemble": ("alignlab_ensemble4_frozen", "alignlab_single_frozen"),
        "lora": ("alignlab_ensemble4_lora", "alignlab_single_lora", "alignlab_ensemble4_lora_top",
                 "alignlab_single_lora_top")}
ENSEMBLE_COST_TARGET = 1.5  # the target: four frozen-backbone heads cost at most 1.5x one
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "rm_vs_trl.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M-Instruct) or a save_pretrained folder")
    p.add_argument("--pairs", type=int, default=64, help="synthetic preference pairs (one epoch over them)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=192, help="max tokens of prompt + response")
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the reward head and both trainers")
    p.add_argument("--lora-layers", type=int, default=4, help="the *_lora_top runs: LoRA on the top N layers only")
    p.add_argument("--only", choices=tuple(ONLY), help="alignlab | trl: that side of the comparison only; "
                                                        "ensemble: the two frozen-backbone alignlab runs only; "
                                                        "lora: the two LoRA runs only")
    add_runner_args(p, SIDES, DEFAULT_OUT)
    return p.parse_args(argv)


def watch_reward_setup() -> dict:
    """train_reward_model keeps its tokenized items and its model to itself; wrap the setup function
    it looks up at call time, to record what is trained on (ids) and the head it starts from.
    Observation only: the wrapped function's results pass through untouched."""
    from alignlab.train import reward_data

    seen: dict = {}
    prepare = reward_data.prepare_reward_session

    def watched(cfg, **kwargs):
        session, items = prepare(cfg, **kwargs)
        seen["items"] = items["train"]
        seen["head"] = session.model.head_weight.detach().flatten().tolist()  # (K, H, 1) -> K*H
        return session, items

    reward_data.prepare_reward_session = watched
    return seen


def run_alignlab(args, side: str) -> dict:
    from alignlab.data.records import PairwiseRecord
    from alignlab.train.reward import RMConfig, train_reward_model

    _, tokenizer, pairs = load_pair_data(args)
    records = [PairwiseRecord(prompt=[{"role": "user", "content": p.prompt}], chosen=p.chosen, rejected=p.rejected)
               for p in pairs]
    seen = watch_reward_setup()
    with tempfile.TemporaryDirectory(prefix=f"bench-{side}-") as tmp:
        cfg = RMConfig(model=args.model, objective="pairwise", output_dir=tmp, batch_size=args.batch_size, epochs=1.0,
                       learning_rate=args.learning_rate, max_length=args.max_length, truncation="truncate",
                       warmup_ratio=0.0, lr_schedule="linear",  # TRL's default schedule
                       progress=False, seed=args.seed, **ALIGNLAB_RUNS[side],
                       lora_layers=args.lora_layers if side.endswith("_lora_top") else 0)
        start = time.perf_counter()
        session = train_reward_model(cfg, train_records=records)
        wall = time.perf_counter() - start
    losses = [row["loss"] for row in session.state.history if "loss" in row]
    if len(seen["items"]) != len(pairs):  # ids are compared pair by pair, in record order
        raise RuntimeError("alignlab dropped pairs while encoding; the sides cannot be compared")
    ids = [[item.prompt_ids + response for response in item.responses] for item in seen["items"]]
    return side_result(args, session.summary["train_seconds"], wall, losses, ids, seen["head"],
                       worker_setup(tokenizer, pairs), members=cfg.ensemble, frozen_backbone=cfg.frozen,
                       lora=cfg.lora or cfg.lora_members, gradient_checkpointing=cfg.gradient_checkpointing,
                       lora_layers=cfg.lora_layers)


def alignlab_initial_head(hidden_size: int, seed: int):
    """alignlab's seeded reward head for one member as transformers' `score.weight` (1, H), made by
    alignlab's own RewardModel around an empty backbone (no second copy of the model in memory)."""
    import torch

    from alignlab.models.reward import RewardModel

    head = RewardModel(torch.nn.Identity(), kind="causal", hidden_size=hidden_size, seed=seed).head_weight  # (1, H, 1)
    return head.detach().permute(0, 2, 1).reshape(1, hidden_size)  # as save_reward_model exports it


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from alignlab.models.reward_io import reward_pad_token_id

    model_path, tokenizer, pairs = load_pair_data(args)
    # SmolLM2's pad is its EOS <|im_end|>, which ends every response: transformers' classifier
    # reads the reward at the last non-pad token, so it would skip the end-of-turn token (and TRL
    # sets the model's pad from the tokenizer). Pad with what alignlab pads with (<|endoftext|>).
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(reward_pad_token_id(tokenizer))
    overrides = {"gradient_checkpointing": False} if args.trl_no_gradient_checkpointing else {}
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        config = RewardConfig(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, num_train_epochs=1,
            learning_rate=args.learning_rate, max_length=args.max_length, seed=args.seed,
            center_rewards_coefficient=None,  # TRL's default, spelled out: plain Bradley-Terry
            bf16=False, model_init_kwargs={"dtype": "float32"},  # fp32 (TRL defaults to bf16)
            report_to="none", save_strategy="no", logging_steps=1, **overrides,
        )
        trainer = RewardTrainer(model=model_path, args=config, processing_class=tokenizer,
                                train_dataset=Dataset.from_list(chat_text_rows(tokenizer, pairs)))
        score = trainer.model.score.weight  # (1, H); the optimizer is only built inside train()
        with torch.no_grad():
            score.copy_(alignlab_initial_head(score.shape[1], args.seed))
        head = score.detach().flatten().tolist()
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    data = trainer.train_dataset
    if len(data) != len(pairs):
        raise RuntimeError("TRL dropped pairs (longer than max_length); the sides cannot be compared")
    ids = [[chosen, rejected] for chosen, rejected in zip(data["chosen_ids"], data["rejected_ids"])]
    return side_result(args, seconds, seconds, losses, ids, head, worker_setup(tokenizer, pairs),
                       pad_token=tokenizer.pad_token, gradient_checkpointing=trainer.args.gradient_checkpointing)


def side_result(args, seconds: float, wall: float, losses: list[float], ids, head: list[float], setup: dict,
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
        "_ids": ids,  # per pair: [prompt + chosen, prompt + rejected]
        "_head": head,
        "_setup": setup,
    }


def compare(a: dict, t: dict) -> dict:
    """alignlab vs TRL: same token ids, same initial head, same mean loss; the speedup."""
    tokens = {side: sum(len(seq) for pair in r["_ids"] for seq in pair) for side, r in (("alignlab", a), ("trl", t))}
    differing = sum(x != y for x, y in zip(a["_ids"], t["_ids"])) + abs(len(a["_ids"]) - len(t["_ids"]))
    return {
        "speedup": a["pairs_per_s"] / t["pairs_per_s"],
        "loss_rel_diff": abs(a["final_mean_loss"] - t["final_mean_loss"]) / abs(t["final_mean_loss"]),
        # Step by step only meaningful when both drew the same data order (they do for seed 0).
        "step_losses_max_abs_diff": max(abs(x - y) for x, y in zip(a["step_losses"], t["step_losses"])),
        "sequence_tokens_alignlab": tokens["alignlab"],
        "sequence_tokens_trl": tokens["trl"],
        "token_ids_identical": differing == 0,
        "pairs_with_different_ids": differing,
        "initial_head_max_abs_diff": max(abs(x - y) for x, y in zip(a["_head"], t["_head"]))
        if len(a["_head"]) == len(t["_head"]) else float("inf"),
    }


def compare_ensemble(results: dict[str, dict]) -> dict:
    """Seconds ratios: 4 heads vs 1 on a frozen backbone (the target), and both vs full fine-tuning."""
    four, one = results["alignlab_ensemble4_frozen"]["seconds"], results["alignlab_single_frozen"]["seconds"]
    out = {"ensemble4_cost_vs_single": four / one, "ensemble4_cost_target": ENSEMBLE_COST_TARGET,
           "ensemble4_within_target": four / one <= ENSEMBLE_COST_TARGET}
    if "alignlab" in results:
        full = results["alignlab"]["seconds"]
        out.update(ensemble4_frozen_vs_full=four / full, single_frozen_vs_full=one / full)
    return out


def compare_lora(results: dict[str, dict]) -> dict:
    """Seconds ratios of 4 LoRA-adapter members vs one LoRA adapter: adapters on every layer (each
    member its own pass through the backbone, so about K by construction; measured here) and on
    the top layers only (one shared pass through the layers below: the target), and all vs full
    fine-tuning."""
    out = {}
    for suffix in ("", "_top"):
        four, one = (results.get(f"alignlab_{run}_lora{suffix}", {}).get("seconds") for run in ("ensemble4", "single"))
        if four is None or one is None:
            continue
        out[f"lora{suffix}_ensemble4_cost_vs_single"] = four / one
        if suffix:
            out.update(lora_top_ensemble4_cost_target=ENSEMBLE_COST_TARGET,
                       lora_top_ensemble4_within_target=four / one <= ENSEMBLE_COST_TARGET)
        if "alignlab" in results:
            full = results["alignlab"]["seconds"]
            out.update({f"lora{suffix}_ensemble4_vs_full": four / full, f"lora{suffix}_single_vs_full": one / full})
    return out


def setup_info(args, side_setup: dict) -> dict:
    return {
        "model": args.model, "pairs": args.pairs, "batch_size": args.batch_size, "max_length": args.max_length,
        "learning_rate": args.learning_rate, "seed": args.seed, "epochs": 1, "precision": "fp32", "device": "cpu",
        "loss": "bradley_terry (no margin, no centering)", "initial_head": "alignlab's seeded head on both sides",
        "trl_gradient_checkpointing": not args.trl_no_gradient_checkpointing,
        **side_setup,
    }


def worker_argv(args) -> list[str]:
    argv = ["--model", args.model, "--pairs", str(args.pairs), "--batch-size", str(args.batch_size),
            "--max-length", str(args.max_length), "--learning-rate", repr(args.learning_rate), "--seed", str(args.seed),
            "--lora-layers", str(args.lora_layers)]
    return argv + (["--trl-no-gradient-checkpointing"] if args.trl_no_gradient_checkpointing else [])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args, lambda a: run_trl(a) if a.worker == "trl" else run_alignlab(a, a.worker))
    sides = ONLY[args.only] if args.only else SIDES
    results, report = run_sides(__file__, sides, worker_argv(args))
    if "alignlab" in results and "trl" in results:
        report.update(compare(results["alignlab"], results["trl"]))
        report["memory_ratio"] = results["alignlab"]["peak_rss_mb"] / results["trl"]["peak_rss_mb"]
    if "alignlab_checkpointing" in results and "trl" in results:
        a, t = results["alignlab_checkpointing"], results["trl"]
        report["speedup_checkpointing"] = a["pairs_per_s"] / t["pairs_per_s"]
        report["memory_ratio_checkpointing"] = a["peak_rss_mb"] / t["peak_rss_mb"]
    if "alignlab_ensemble4_frozen" in results:
        report.update(compare_ensemble(results))
    report.update(compare_lora(results))
    report["setup"] = setup_info(args, results[sides[0]]["_setup"])
    return publish(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
