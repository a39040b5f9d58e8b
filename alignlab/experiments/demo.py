"""`alignlab demo`: RLHF end to end on CPU with the embedded SmolLM2-135M-Instruct.

1. prompts "Write one sentence about <topic>." (built-in topics, split into train / held-out);
2. two sampled responses per train prompt from the base model;
3. a simulated Bradley-Terry annotator, driven by the gold reward (VADER sentiment), labels each
   pair — noisily, as people do;
4. DPO with LoRA on those pairs; every few steps the policy is sampled on probe prompts to track
   gold reward and KL to the reference;
5. held-out evaluation: gold reward of base vs trained samples, win-rate judged by the gold
   reward, and KL(π || π_ref) estimated on the trained policy's own samples.
Writes report.json, metrics and reward_kl.png into the output folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from alignlab.config import field
from alignlab.data.tokenize import encode_prompt
from alignlab.eval.metrics import win_rate, win_rate_ci
from alignlab.eval.plots import plot_training_curves
from alignlab.experiments.common import sampled_kl
from alignlab.lab.annotators import BradleyTerryAnnotator, make_preference_pairs
from alignlab.lab.sentiment import SentimentTask
from alignlab.models.load import load_policy, load_tokenizer, reference_context
from alignlab.rollout.base import SamplingParams
from alignlab.rollout.hf import HFGenerator
from alignlab.train.dpo import DPOConfig, train_dpo


@dataclass
class DemoConfig:
    model: str = field("embedded", "policy to align (the embedded SmolLM2-135M-Instruct by default)")
    output: str = field("", "output folder (default runs/demo-<time>)")
    seed: int = field(0, "seed for prompts, sampling, labels and training")
    train_prompts: int = field(160, "prompts whose sampled pairs are labelled and trained on")
    eval_prompts: int = field(64, "held-out prompts for the final evaluation")
    probe_prompts: int = field(16, "held-out prompts sampled during training to track reward and KL")
    eval_samples: int = field(2, "samples per held-out prompt from each of base and trained policy")
    max_new_tokens: int = field(32, "max tokens per sampled response")
    temperature: float = field(1.0, "sampling temperature (1.0: samples from the policy itself, so KL estimates are unbiased)")
    annotator_temperature: float = field(0.15, "Bradley-Terry temperature of the simulated annotator on VADER scores")
    label_flip: float = field(0.05, "extra label noise: probability that the annotator's choice is flipped")
    loss: str = field("dpo", "DPO-family loss")
    beta: float = field(0.1, "DPO beta")
    epochs: float = field(2.0, "passes over the labelled pairs")
    batch_size: int = field(8, "pairs per step")
    learning_rate: float = field(8e-4, "LoRA learning rate")
    lora_r: int = field(16, "LoRA rank")
    probe_every: int = field(12, "steps between probes of gold reward and KL during training")
    generation_batch: int = field(64, "rows per generate call")


class _Probe:
    """Samples the policy on fixed prompts: gold reward and KL to the reference, per call."""

    def __init__(self, cfg: DemoConfig, tokenizer, task, prompts):
        self.cfg, self.tokenizer, self.task = cfg, tokenizer, task
        self.prompt_ids = [encode_prompt(tokenizer, p) for p in prompts]

    def sample(self, model, n: int, seed: int, progress: str | None = None):
        params = SamplingParams(n=n, temperature=self.cfg.temperature, max_new_tokens=self.cfg.max_new_tokens, seed=seed)
        generator = HFGenerator(model, self.tokenizer, batch_size=self.cfg.generation_batch, progress=progress)
        return generator.generate(self.prompt_ids, params)

    def __call__(self, model, n: int = 1, seed: int = 1) -> dict[str, float]:
        out = self.sample(model, n, seed)
        gold = self.task.gold_reward(out.texts)
        kl = sampled_kl(model, out.prompt_ids, out.completion_ids)
        return {"gold_reward": float(gold.mean()), "kl": float(kl.mean()),
                "response_tokens": sum(map(len, out.completion_ids)) / len(out)}


def _label_pairs(cfg, tokenizer, model, task, prompts):
    probe = _Probe(cfg, tokenizer, task, prompts)
    out = probe.sample(model, 2, cfg.seed, progress="sampling pairs")
    a, b = out.texts[0::2], out.texts[1::2]
    annotator = BradleyTerryAnnotator(task.gold_reward, temperature=cfg.annotator_temperature,
                                      flip_prob=cfg.label_flip, seed=cfg.seed)
    records = make_preference_pairs(prompts, a, b, annotator)
    gold_a, gold_b = task.gold_reward(a), task.gold_reward(b)
    tokens = sum(map(len, out.completion_ids))
    return records, {"pairs": len(records), "sampled_tokens": tokens,
                     "ties_in_gold": int((gold_a == gold_b).sum())}


def run_demo(cfg: DemoConfig) -> dict:
    t0 = time.perf_counter()
    out_dir = Path(cfg.output or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tokenizer, model = load_tokenizer(cfg.model), load_policy(cfg.model)
    task = SentimentTask()
    train_prompts, eval_prompts = task.split(cfg.train_prompts, cfg.eval_prompts, seed=cfg.seed)
    timings = {"load_seconds": time.perf_counter() - t0}

    t = time.perf_counter()
    print(f"alignlab demo: sampling 2 responses for each of {len(train_prompts)} prompts ...", flush=True)
    records, label_stats = _label_pairs(cfg, tokenizer, model, task, train_prompts)
    timings["sample_and_label_seconds"] = time.perf_counter() - t

    probe = _Probe(cfg, tokenizer, task, eval_prompts[: cfg.probe_prompts])
    dpo_cfg = DPOConfig(
        model=cfg.model, output_dir=str(out_dir / "dpo"), seed=cfg.seed, loss=cfg.loss, beta=cfg.beta,
        epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, lora=True,
        lora_r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, eval_every=cfg.probe_every, max_length=512,
        warmup_ratio=0.1, eval_fraction=0.1,
    )
    print(f"alignlab demo: DPO with LoRA on {len(records)} labelled pairs ...", flush=True)
    session = train_dpo(dpo_cfg, train_records=records, model=model, tokenizer=tokenizer,
                        extra_eval=lambda m: probe(m, 1, cfg.seed + 7))
    timings["train_seconds"] = session.summary["train_seconds"]

    t = time.perf_counter()
    final = _Probe(cfg, tokenizer, task, eval_prompts)
    trained = final.sample(session.model, cfg.eval_samples, cfg.seed + 11, progress="held-out: trained policy")
    with reference_context(session.model):
        base = final.sample(session.model, cfg.eval_samples, cfg.seed + 11, progress="held-out: base policy")
    gold_trained, gold_base = task.gold_reward(trained.texts), task.gold_reward(base.texts)
    kl = sampled_kl(session.model, trained.prompt_ids, trained.completion_ids)
    wr = win_rate(gold_trained, gold_base)
    timings["eval_seconds"] = time.perf_counter() - t

    curve = [r for r in session.state.history if "eval/gold_reward" in r]
    report = {
        "gold_reward_before": float(gold_base.mean()),
        "gold_reward_after": float(gold_trained.mean()),
        "win_rate_vs_reference": float(wr),
        "win_rate_ci95": list(win_rate_ci(gold_trained, gold_base)),
        "kl_to_reference": float(kl.mean()),
        "train_seconds": timings["train_seconds"],
        "total_seconds": time.perf_counter() - t0,
        "heldout_comparisons": len(gold_trained),
        "labelling": label_stats,
        "dpo_final_eval": session.summary.get("final_eval", {}),
        "timings": timings,
        "curve": [{"step": r["step"], "gold_reward": r["eval/gold_reward"], "kl": r["eval/kl"]} for r in curve],
        "examples": [{"prompt": eval_prompts[i // cfg.eval_samples][-1]["content"], "base": base.texts[i],
                      "trained": trained.texts[i]} for i in range(0, min(len(trained), 12), cfg.eval_samples)],
        "config": asdict(cfg),
        "run_folder": str(session.run_dir),
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    if report["curve"]:
        plot_training_curves(report["curve"], out_dir / "reward_kl.png")
    _print_table(report, out_dir)
    return report


def _print_table(report: dict, out_dir: Path) -> None:
    table = Table(title="alignlab demo: DPO on simulated sentiment preferences (held-out prompts)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("gold reward (VADER) before", f"{report['gold_reward_before']:+.3f}"),
        ("gold reward (VADER) after", f"{report['gold_reward_after']:+.3f}"),
        ("win-rate vs base (gold judge)", f"{100 * report['win_rate_vs_reference']:.1f}%"),
        ("  95% bootstrap interval", "{:.0f}-{:.0f}%".format(*(100 * x for x in report["win_rate_ci95"]))),
        ("KL(policy || reference), nats", f"{report['kl_to_reference']:.3f}"),
        ("labelled pairs", str(report["labelling"]["pairs"])),
        ("train seconds", f"{report['train_seconds']:.0f}"),
        ("total seconds", f"{report['total_seconds']:.0f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console = Console()
    console.print(table)
    for ex in report["examples"][:3]:
        console.print(f"[bold]{ex['prompt']}[/bold]\n  base:    {ex['base']}\n  trained: {ex['trained']}")
    console.print(f"report: {out_dir / 'report.json'}  plot: {out_dir / 'reward_kl.png'}")
