"""`alignlab lab online-vs-offline`: offline DPO vs online iterative DPO at one label budget
(the question of Xu et al. 2024, arXiv:2404.10719, and Dong et al. 2024, arXiv:2405.07863).

Per seed, on the sentiment task, with the same simulated annotator (noisy Bradley-Terry labels
driven by the gold reward), the same β, the same learning rate, LoRA and optimizer steps:

- offline: 2 responses to each of `iterations` × `prompts_per_step` prompts are sampled ONCE from
  the base model, labelled, and DPO trains `epochs` passes over those pairs;
- online: `train online-dpo` spends the same labels over `iterations` iterations of
  `prompts_per_step` prompts, 2 samples each from the current policy (so one judged comparison is
  one pair, as offline), `epochs` passes over each iteration's pairs (`ppo_epochs`).

Both see the same prompts. Labels are counted where the judge is called and in the run folders'
pair files; steps come from the runs' summaries, and the experiment stops with an error if either
differs between the arms. Each trained policy is then sampled on held-out prompts: gold reward
and the Monte-Carlo KL(π || π_base) (LoRA disabled = the base model). Across seeds: means with
Student-t 95% intervals, and the paired online − offline difference.
Writes online_vs_offline.json and online_vs_offline.png. The result is what it measures.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from scipy import stats

from alignlab.config import field
from alignlab.data.records import PairwiseRecord
from alignlab.eval.metrics import bootstrap_ci
from alignlab.eval.plots import plot_reward_vs_kl
from alignlab.experiments.common import LabDataConfig, lab_output, sample_texts, sampled_kl
from alignlab.lab.sentiment import SentimentTask
from alignlab.models.load import load_policy, load_tokenizer
from alignlab.preferences.base import AnnotatorPreference
from alignlab.rewards.base import FunctionReward
from alignlab.train.dpo import DPOConfig, train_dpo
from alignlab.train.online import resolve_online, train_online

ARMS = ("offline", "online")


@dataclass
class OnlineVsOfflineConfig(LabDataConfig):
    seeds: int = field(3, "runs per arm, seeds seed..seed+K-1; each draws its own prompts, samples, labels and training order; intervals are over them")
    iterations: int = field(4, "online iterations; the label budget is iterations x prompts_per_step")
    prompts_per_step: int = field(32, "prompts (= labelled pairs) per online iteration")
    eval_prompts: int = field(48, "held-out prompts of the final evaluation")
    eval_samples: int = field(2, "samples per held-out prompt in the final evaluation")
    beta: float = field(0.1, "β of the DPO loss, both arms")
    epochs: int = field(1, "passes over each batch of labelled pairs (offline: epochs; online: ppo_epochs)")
    batch_size: int = field(8, "pairs per optimizer step, both arms")
    learning_rate: float = field(8e-4, "LoRA learning rate, both arms (constant, no warmup)")
    lora_r: int = field(16, "LoRA rank, both arms")
    max_new_tokens: int = field(24, "max tokens per sampled response")


class CountingJudge:
    """A preference source that counts the comparisons it answers: the labels spent."""

    def __init__(self, inner):
        self.inner, self.name, self.labels = inner, inner.name, 0

    def prefer(self, prompts, a, b):
        self.labels += len(a)
        return self.inner.prefer(prompts, a, b)


def _judge(task, cfg, seed: int) -> CountingJudge:
    gold = FunctionReward(task.gold_reward, name="gold", responses_only=True)
    return CountingJudge(AnnotatorPreference(gold, temperature=cfg.annotator_temperature, flip_prob=cfg.label_flip,
                                             seed=seed))


def _common(cfg: OnlineVsOfflineConfig, seed: int, output_dir: Path) -> dict:
    """The settings both arms share."""
    return dict(model=cfg.policy, output_dir=str(output_dir), seed=seed, lora=True, lora_r=cfg.lora_r,
                lora_alpha=2 * cfg.lora_r, learning_rate=cfg.learning_rate, lr_schedule="constant", warmup_ratio=0.0,
                max_grad_norm=1.0, grad_accum=1, progress=True)


def _offline(cfg, seed, out: Path, tokenizer, task, prompts) -> tuple:
    judge = _judge(task, cfg, seed)
    model = load_policy(cfg.policy)  # sampled as the base model, then trained (LoRA added by train_dpo)
    texts = sample_texts(model, tokenizer, prompts, 2, cfg, seed, "offline: sampling the base").texts
    a, b = texts[0::2], texts[1::2]
    p = judge.prefer(prompts, a, b)
    records = [PairwiseRecord(x, *((ai, bi) if float(pi) > 0.5 else (bi, ai)), annotator=judge.name)
               for x, ai, bi, pi in zip(prompts, a, b, p) if float(pi) != 0.5]
    with (out / "pairs.jsonl").open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}) + "\n")
    dpo = DPOConfig(**_common(cfg, seed, out / "dpo"), loss="dpo", beta=cfg.beta, epochs=float(cfg.epochs),
                    batch_size=cfg.batch_size, eval_fraction=0.0, max_length=512)
    session = train_dpo(dpo, train_records=records, model=model, tokenizer=tokenizer)
    return session, judge.labels, len(records)


def _online(cfg, seed, out: Path, tokenizer, task, prompts) -> tuple:
    judge = _judge(task, cfg, seed)
    online = resolve_online("online-dpo", flags=dict(
        **_common(cfg, seed, out / "run"), iterations=cfg.iterations, prompts_per_step=cfg.prompts_per_step,
        samples_per_prompt=2, ppo_epochs=cfg.epochs, batch_size=2 * cfg.batch_size, kl_coef=cfg.beta,
        preference_loss="dpo", max_new_tokens=cfg.max_new_tokens, temperature=1.0,
        rollout_batch_size=cfg.generation_batch))
    session = train_online(online, model=load_policy(cfg.policy), tokenizer=tokenizer,
                           train_rows=[{"prompt": x} for x in prompts], judge=judge)
    pairs = sum(len(p.read_text().splitlines()) for p in sorted((session.run_dir / "pairs").glob("iter-*.jsonl")))
    return session, judge.labels, pairs


def _evaluate(model, tokenizer, task, prompts, cfg, seed: int) -> dict:
    """Gold reward and KL(π || π_base) on the policy's own samples of the held-out prompts."""
    out = sample_texts(model, tokenizer, prompts, cfg.eval_samples, cfg, seed + 11, "held-out evaluation")
    gold = task.gold_reward(out.texts).double()
    kl = sampled_kl(model, out.prompt_ids, out.completion_ids).double()
    return {"gold_reward": float(gold.mean()), "gold_reward_ci95": list(bootstrap_ci(gold, seed=seed)),
            "kl": float(kl.mean()), "kl_ci95": list(bootstrap_ci(kl, seed=seed)),
            "response_tokens": sum(map(len, out.completion_ids)) / len(out)}


def t_interval(values) -> dict:
    """Mean and Student-t 95% interval over seeds (half-width 0 with one seed)."""
    x = torch.tensor(values, dtype=torch.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "ci95": [mean, mean], "n": len(x)}
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(unbiased=True) / len(x) ** 0.5)
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(x)}


def run_online_vs_offline(cfg: OnlineVsOfflineConfig) -> dict:
    if cfg.batch_size < 1 or cfg.prompts_per_step % cfg.batch_size:
        raise ValueError(f"prompts_per_step ({cfg.prompts_per_step}) must be a multiple of batch_size "
                         f"({cfg.batch_size}), so that both arms take the same optimizer steps")
    if cfg.seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {cfg.seeds}")
    t0 = time.perf_counter()
    out = lab_output(cfg, "online-vs-offline")
    tokenizer, task = load_tokenizer(cfg.policy), SentimentTask()
    budget = cfg.iterations * cfg.prompts_per_step
    runs, base = [], []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        train_prompts, eval_prompts = task.split(budget, cfg.eval_prompts, seed=seed)
        base.append({"seed": seed, **_evaluate(load_policy(cfg.policy), tokenizer, task, eval_prompts, cfg, seed)})
        for arm, train in (("offline", _offline), ("online", _online)):
            folder = out / f"seed-{seed}" / arm
            folder.mkdir(parents=True, exist_ok=True)
            session, labels, pairs = train(cfg, seed, folder, tokenizer, task, train_prompts)
            runs.append({"seed": seed, "arm": arm, "labels": labels, "pairs": pairs,
                         "steps": session.summary["steps"], "beta": cfg.beta, "run_dir": str(session.run_dir),
                         **_evaluate(session.model, tokenizer, task, eval_prompts, cfg, seed)})
        _check_fair(runs[-2:])
    result = {"runs": runs, "base": base, "summary": _summary(runs, base), "label_budget": budget,
              "seconds": time.perf_counter() - t0, "config": asdict(cfg)}
    (out / "online_vs_offline.json").write_text(json.dumps(result, indent=1))
    _plot(result, out / "online_vs_offline.png")
    _print(result, out)
    return result


def _check_fair(pair: list[dict]) -> None:
    """The comparison holds only at equal labels and steps: stop rather than report an unfair one."""
    for key in ("labels", "pairs", "steps"):
        if pair[0][key] != pair[1][key]:
            raise RuntimeError(f"seed {pair[0]['seed']}: offline and online differ in {key} "
                               f"({pair[0][key]} vs {pair[1][key]}); the comparison would not be fair")


def _summary(runs: list[dict], base: list[dict]) -> dict:
    by = {arm: sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"]) for arm in ARMS}
    out = {arm: {k: t_interval([r[k] for r in rows]) for k in ("gold_reward", "kl")} for arm, rows in by.items()}
    out["base"] = {"gold_reward": t_interval([b["gold_reward"] for b in base])}
    out["online_minus_offline"] = {k: t_interval([on[k] - off[k] for on, off in zip(by["online"], by["offline"])])
                                   for k in ("gold_reward", "kl")}
    return out


def _plot(result: dict, path: Path) -> None:
    points = [{"label": f"{r['arm']} (seed {r['seed']})", "kl": r["kl"], "gold_reward": r["gold_reward"]}
              for r in result["runs"]]
    s = result["summary"]
    points += [{"label": f"{arm} mean", "kl": s[arm]["kl"]["mean"], "gold_reward": s[arm]["gold_reward"]["mean"],
                "gold_reward_ci": s[arm]["gold_reward"]["ci95"]} for arm in ARMS]
    points.append({"label": "base", "kl": 0.0, "gold_reward": s["base"]["gold_reward"]["mean"]})
    plot_reward_vs_kl(points, path, title=f"DPO at {result['label_budget']} labels: offline vs online (held-out)")


def _print(result: dict, out: Path) -> None:
    table = Table(title=f"Offline vs online DPO, {result['label_budget']} labels each (held-out, mean over seeds)")
    for col in ("arm", "gold reward", "95% CI", "KL", "95% CI"):
        table.add_column(col, justify="right")
    s = result["summary"]
    for arm in (*ARMS, "online_minus_offline"):
        g, k = s[arm]["gold_reward"], s[arm]["kl"]
        table.add_row(arm, f"{g['mean']:+.3f}", f"[{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]", f"{k['mean']:.3f}",
                      f"[{k['ci95'][0]:+.3f}, {k['ci95'][1]:+.3f}]")
    console = Console()
    console.print(table)
    console.print(f"base gold reward {s['base']['gold_reward']['mean']:+.3f}")
    console.print(f"written: {out / 'online_vs_offline.json'}, {out / 'online_vs_offline.png'}")
