"""`alignlab lab overoptimization`: reward overoptimization under online RL, single proxy vs a
conservative ensemble (Gao et al. 2022, arXiv:2210.10760; Coste et al. 2023, arXiv:2310.02743).

1. sample pairs from the base policy, label them with a noisy Bradley-Terry annotator driven by
   the gold reward (VADER sentiment), train the proxies: a K-member ensemble (heads on one frozen
   backbone) and optionally one fully fine-tuned reward model (`proxies.build_proxies`);
2. for each selector (a single member, WCO, UWO, the full model, ...): optimize a fresh LoRA policy
   against that proxy with an online method (GRPO by default, no KL penalty so that the policy
   can run as far from the reference as the proxy lets it), evaluating every `eval_every` steps on
   held-out prompts: gold reward, proxy reward and the sampled KL to the reference;
3. writes overoptimization.json (every point) and overoptimization.png (gold and proxy reward
   against sqrt(KL), the axis of Gao et al.'s fits).

Expected shape: the proxy keeps rising while the gold reward peaks and falls; a conservative
ensemble peaks later or higher. The experiment reports what it measures, whatever it is.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from alignlab.config import field
from alignlab.eval.plots import plot_reward_vs_kl
from alignlab.experiments.common import lab_output
from alignlab.experiments.proxies import ProxyConfig, build_proxies, selector_scores
from alignlab.lab.sentiment import SentimentTask
from alignlab.models.load import load_policy, load_tokenizer
from alignlab.rewards.base import FunctionReward
from alignlab.rewards.spec import WeightedRewards
from alignlab.train.online import resolve_online, train_online

SELECTORS = ("single", "mean", "wco", "uwo", "full")


@dataclass
class OveroptConfig(ProxyConfig):
    train_prompts: int = field(256, "prompts whose sampled pairs label the proxies' training data (and held-out pairs); the policy is optimized on them")
    eval_prompts: int = field(32, "held-out prompts, never labelled nor trained on; evaluations sample the first rl_eval_prompts of them")
    selectors: list = field(["single", "wco", "uwo"], "proxies to optimize against: single | mean | wco | uwo | full")
    method: str = field("grpo", "online method: grpo | rloo | ppo | reinforce_pp | remax | p3o")
    iterations: int = field(12, "rollout iterations per run")
    prompts_per_step: int = field(16, "prompts per iteration")
    samples_per_prompt: int = field(4, "completions per prompt")
    rl_learning_rate: float = field(5e-4, "LoRA learning rate of the policy")
    kl_coef: float = field(0.0, "KL penalty (0: let the policy run, to expose overoptimization)")
    eval_every: int = field(4, "evaluate (gold, proxy, KL) every N optimizer steps")
    rl_eval_prompts: int = field(24, "held-out prompts sampled at each evaluation")


def _proxy(selector: str, proxies, cfg: OveroptConfig):
    if selector == "full":
        if proxies.full_source is None:
            raise ValueError("selector 'full' needs full_rm: true and members: heads (with members: fine-tuned, "
                             "'single' is the full fine-tune)")
        return proxies.full_source
    return _Selected(proxies.source, selector, cfg.uwo_coef)


class _Selected:
    """The ensemble read one way: member 0 alone ("single", as in BoN) or aggregated (mean/wco/uwo)."""

    def __init__(self, source, selector: str, uwo_coef: float):
        self.source, self.selector, self.uwo_coef, self.name = source, selector, uwo_coef, selector

    def score(self, prompts, responses):
        members = self.source.member_scores(prompts, responses)  # (K, N)
        return selector_scores(members, None, self.uwo_coef)[self.selector]


def _points(summary: dict, run_dir: Path, selector: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [{"step": 0, **{f"eval/{k}": v for k, v in summary["eval_before"].items()}}]
    evals += [r for r in rows if "eval/reward/gold" in r]
    return [{"label": selector, "step": r["step"], "kl": max(r.get("eval/kl_to_reference", 0.0), 0.0),
             "gold_reward": r["eval/reward/gold"], "proxy_reward": r["eval/reward/proxy"]} for r in evals]


def run_overoptimization(cfg: OveroptConfig, *, policy_loader=None, tokenizer=None) -> dict:
    bad = [s for s in cfg.selectors if s not in SELECTORS]
    if bad:
        raise ValueError(f"unknown selector(s) {bad}; valid: {', '.join(SELECTORS)}")
    t0 = time.perf_counter()
    out = lab_output(cfg, "overopt")
    load = policy_loader or (lambda: load_policy(cfg.policy))
    tokenizer = tokenizer or load_tokenizer(cfg.policy)
    task = SentimentTask()
    train_prompts, eval_prompts = task.split(cfg.train_prompts, cfg.eval_prompts, seed=cfg.seed)
    proxies = build_proxies(cfg, out, load(), tokenizer, task, train_prompts)
    gold = FunctionReward(task.gold_reward, name="gold", responses_only=True)
    points, runs = [], {}
    for selector in cfg.selectors:
        proxy = _proxy(selector, proxies, cfg)
        online = resolve_online(cfg.method, flags=dict(
            model=cfg.policy, output_dir=str(out / f"rl-{selector}"), lora=True, learning_rate=cfg.rl_learning_rate,
            iterations=cfg.iterations, prompts_per_step=cfg.prompts_per_step, samples_per_prompt=cfg.samples_per_prompt,
            max_new_tokens=cfg.max_new_tokens, kl_coef=cfg.kl_coef, eval_every=cfg.eval_every,
            eval_prompts=cfg.rl_eval_prompts, eval_temperature=1.0, lr_schedule="constant", warmup_ratio=0.0,
            batch_size=cfg.prompts_per_step * cfg.samples_per_prompt // 2, seed=cfg.seed, progress=True))
        summary = train_online(online, model=load(), tokenizer=tokenizer,
                               train_rows=[{"prompt": p} for p in train_prompts],
                               eval_rows=[{"prompt": p} for p in eval_prompts],
                               rewards=WeightedRewards([proxy], names=["proxy"]),
                               eval_rewards=WeightedRewards([proxy, gold], [1.0, 0.0], ["proxy", "gold"])).summary
        runs[selector] = {k: summary[k] for k in ("steps", "loop_seconds", "eval_before", "final_eval")}
        points += _points(summary, Path(summary["run_dir"]), selector)
    result = {"points": points, "runs": runs, "heldout_accuracy": proxies.accuracy,
              "gold_ceiling_heldout": proxies.ceiling, "labelled_pairs": len(proxies.records),
              "seconds": time.perf_counter() - t0, "config": asdict(cfg)}
    (out / "overoptimization.json").write_text(json.dumps(result, indent=1))
    plot_reward_vs_kl(points, out / "overoptimization.png", rewards=("gold_reward", "proxy_reward"), sqrt_kl=True,
                      title=f"{cfg.method.upper()} against a proxy RM: gold and proxy reward")
    _print(result, out)
    return result


def _print(result: dict, out: Path) -> None:
    table = Table(title="Online RL against a proxy reward model (held-out prompts)")
    for col in ("proxy", "step", "KL", "gold reward", "proxy reward"):
        table.add_column(col, justify="right")
    for p in result["points"]:
        table.add_row(p["label"], str(p["step"]), f"{p['kl']:.2f}", f"{p['gold_reward']:+.3f}", f"{p['proxy_reward']:+.3f}")
    console = Console()
    console.print(table)
    console.print(f"proxy held-out accuracy: {result['heldout_accuracy']}; gold ceiling {result['gold_ceiling_heldout']:.3f}")
    console.print(f"written: {out / 'overoptimization.json'}, {out / 'overoptimization.png'}")
