"""`alignlab lab nash-lm`: Nash methods against online DPO on a language model, under an
intransitive judge.

The judge is the lab's cycle (`alignlab.preferences.cycle`): responses are short, medium or long
(in words), and short ≻ medium ≻ long ≻ short with probability 1/2 + margin. No reward represents
it. Per seed, on the sentiment task's prompts with the embedded SmolLM2 and LoRA, every method in
`methods` trains with the same judge, prompts, iterations, learning rate and LoRA:

- `online-dpo` (the baseline "DPO policy"): best-vs-worst pairs of 4 samples, hard labels, DPO;
- `spo`: each sample's win rate in its group as the reward, RLOO with the KL penalty;
- `inpo`: uniformly drawn judged pairs, INPO's no-regret loss (soft labels);
- `nash-md`: each sample against an opponent of the mixture pi^(1-m) pi_ref^m, RLOO with the KL penalty.

Each trained policy (and the base model) is then sampled on held-out prompts and measured:

- its **win rate against the DPO policy** under the judge: its i-th sample of a prompt against the
  DPO policy's i-th sample of that prompt, P averaged per prompt; the judge is antisymmetric, so
  one presentation order is exact;
- its **worst-case win rate** min_k Σ_j q_j P(j ≻ k) over the three kinds k, from its kind
  distribution q: what an opponent that always answers with the best kind against it leaves it
  (1/2 at the game's unregularized equilibrium, 1/2 − margin for a policy of one kind);
- its kind distribution and KL(π || π_base).

Intervals: 95% percentile bootstrap over the held-out prompts (per seed). Writes nash_lm.json and
nash_lm.png. The result is what it measures.
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
from alignlab.eval.metrics import bootstrap_ci
from alignlab.experiments.common import LabDataConfig, lab_output, sample_texts, sampled_kl
from alignlab.lab.sentiment import SentimentTask
from alignlab.models.load import load_policy, load_tokenizer
from alignlab.preferences.cycle import BEATS, KINDS, CyclePreference
from alignlab.train.online import ONLINE_METHODS, resolve_online, train_online

BASELINE = "online-dpo"


@dataclass
class NashLMConfig(LabDataConfig):
    methods: list = field(["online-dpo", "spo", "inpo", "nash-md"], "online methods to train; the first is the DPO baseline every policy plays against")
    seeds: int = field(1, "runs per method, seeds seed..seed+K-1")
    iterations: int = field(4, "online iterations per method")
    prompts_per_step: int = field(16, "prompts per iteration")
    samples_per_prompt: int = field(4, "samples per prompt per iteration (every method)")
    eval_prompts: int = field(48, "held-out prompts of the evaluation")
    eval_samples: int = field(4, "samples per held-out prompt and policy")
    learning_rate: float = field(5e-4, "LoRA learning rate (constant), every method")
    lora_r: int = field(16, "LoRA rank, every method")
    batch_size: int = field(16, "completions per micro-batch, every method")
    short_words: int = field(20, "the judge: at most this many words is a short response")
    long_words: int = field(28, "the judge: more than this many words is a long response")
    margin: float = field(0.4, "the judge: the winning kind's probability is 1/2 + margin")


def worst_case_win_rate(kind_share: torch.Tensor, margin: float) -> float:
    """min over kinds k of Σ_j q_j P(j ≻ k): a policy with kind distribution q against the
    opponent that always plays its best-responding kind."""
    return min(float(sum(kind_share[j] * _p(j, k, margin) for j in range(3))) for k in range(3))


def _p(j: int, k: int, margin: float) -> float:
    return 0.5 if j == k else (0.5 + margin if BEATS[j] == k else 0.5 - margin)


def _flags(cfg: NashLMConfig, method: str, seed: int, out: Path) -> dict:
    flags = dict(model=cfg.policy, output_dir=str(out), seed=seed, lora=True, lora_r=cfg.lora_r,
                 lora_alpha=2 * cfg.lora_r, learning_rate=cfg.learning_rate, lr_schedule="constant",
                 warmup_ratio=0.0, max_grad_norm=1.0, iterations=cfg.iterations, prompts_per_step=cfg.prompts_per_step,
                 samples_per_prompt=cfg.samples_per_prompt, batch_size=cfg.batch_size, temperature=1.0,
                 max_new_tokens=cfg.max_new_tokens, rollout_batch_size=cfg.generation_batch, progress=True)
    return flags


def _evaluate(model, tokenizer, prompts, cfg: NashLMConfig, seed: int, judge: CyclePreference) -> dict:
    out = sample_texts(model, tokenizer, prompts, cfg.eval_samples, cfg, seed + 11, "held-out samples")
    kinds = torch.tensor([judge.kind(t) for t in out.texts]).reshape(len(prompts), cfg.eval_samples)
    kl = sampled_kl(model, out.prompt_ids, out.completion_ids).double() if hasattr(model, "disable_adapter") \
        else torch.zeros(len(out.texts), dtype=torch.float64)
    return {"texts": out.texts, "kinds": kinds, "kl": float(kl.mean()), "kl_ci95": list(bootstrap_ci(kl, seed=seed))}


def _measure(policy: dict, baseline: dict, prompts, judge: CyclePreference, seed: int, name: str) -> dict:
    P, n = policy["kinds"].shape
    flat = [(prompts[i // n], policy["texts"][i], baseline["texts"][i]) for i in range(P * n)]
    p = judge.prefer([x for x, _, _ in flat], [a for _, a, _ in flat], [b for _, _, b in flat]).double()
    per_prompt = p.reshape(P, n).mean(-1)  # (P,)
    share = torch.stack([(policy["kinds"] == k).double().mean() for k in range(3)])
    g = torch.Generator().manual_seed(seed)
    boot = []
    for _ in range(1000):  # prompts resampled: the worst-case win rate's interval
        idx = torch.randint(0, P, (P,), generator=g)
        kinds = policy["kinds"][idx]
        boot.append(worst_case_win_rate(torch.stack([(kinds == k).double().mean() for k in range(3)]), judge.margin))
    boot = torch.tensor(boot)
    return {"method": name, "win_rate_vs_dpo": float(per_prompt.mean()),
            "win_rate_vs_dpo_ci95": list(bootstrap_ci(per_prompt, seed=seed)),
            "worst_case_win_rate": worst_case_win_rate(share, judge.margin),
            "worst_case_win_rate_ci95": [float(boot.quantile(0.025)), float(boot.quantile(0.975))],
            "kind_share": dict(zip(KINDS, share.tolist())), "kl": policy["kl"], "kl_ci95": policy["kl_ci95"]}


def run_nash_lm(cfg: NashLMConfig) -> dict:
    methods = list(cfg.methods)
    unknown = [m for m in methods if m not in ONLINE_METHODS]
    if unknown or not methods or methods[0] != BASELINE:
        raise ValueError(f"methods must start with the baseline {BASELINE} and name online methods "
                         f"({', '.join(ONLINE_METHODS)}); got {methods}")
    if cfg.seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {cfg.seeds}")
    judge = CyclePreference(cfg.short_words, cfg.long_words, cfg.margin)
    for method in methods:  # every setting checked before anything slow
        resolve_online(method, flags=_flags(cfg, method, cfg.seed, Path("unused"))).validate()
    t0 = time.perf_counter()
    out = lab_output(cfg, "nash-lm")
    tokenizer, task = load_tokenizer(cfg.policy), SentimentTask()
    rows = []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        train_prompts, eval_prompts = task.split(cfg.iterations * cfg.prompts_per_step, cfg.eval_prompts, seed=seed)
        samples = {"base": _evaluate(load_policy(cfg.policy), tokenizer, eval_prompts, cfg, seed, judge)}
        run_dirs = {}
        for method in methods:
            online = resolve_online(method, flags=_flags(cfg, method, seed, out / f"seed-{seed}" / method))
            session = train_online(online, model=load_policy(cfg.policy), tokenizer=tokenizer,
                                   train_rows=[{"prompt": x} for x in train_prompts], judge=judge)
            samples[method] = _evaluate(session.model, tokenizer, eval_prompts, cfg, seed, judge)
            run_dirs[method] = str(session.run_dir)
        for name in ("base", *methods):
            rows.append({"seed": seed, "run_dir": run_dirs.get(name, ""),
                         **_measure(samples[name], samples[BASELINE], eval_prompts, judge, seed, name)})
    result = {"rows": rows, "judge": judge.name, "seconds": time.perf_counter() - t0, "config": asdict(cfg)}
    (out / "nash_lm.json").write_text(json.dumps(result, indent=1))
    _plot(result, out / "nash_lm.png")
    _print(result, out)
    return result


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['method']} (s{r['seed']})" for r in rows]
    x = range(len(rows))
    for key, ax, title in (("win_rate_vs_dpo", left, "win rate against the DPO policy"),
                           ("worst_case_win_rate", right, "worst-case win rate (best-responding kind)")):
        values = [r[key] for r in rows]
        # a percentile interval need not contain the point estimate: bars never go negative
        low = [max(0.0, v - r[f"{key}_ci95"][0]) for v, r in zip(values, rows)]
        high = [max(0.0, r[f"{key}_ci95"][1] - v) for v, r in zip(values, rows)]
        ax.errorbar(list(x), values, yerr=[low, high], fmt="o", capsize=4)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(list(x), labels, rotation=30, ha="right")
        ax.set_title(title)
    fig.suptitle(f"Under the intransitive judge {result['judge']} (held-out, 95% bootstrap intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print(result: dict, out: Path) -> None:
    table = Table(title=f"Nash methods vs online DPO under {result['judge']} (held-out)")
    for col in ("seed", "policy", "win rate vs DPO", "worst-case win rate", *KINDS, "KL"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        w, c = r["win_rate_vs_dpo_ci95"], r["worst_case_win_rate_ci95"]
        table.add_row(str(r["seed"]), r["method"], f"{r['win_rate_vs_dpo']:.3f} [{w[0]:.3f}, {w[1]:.3f}]",
                      f"{r['worst_case_win_rate']:.3f} [{c[0]:.3f}, {c[1]:.3f}]",
                      *(f"{r['kind_share'][k]:.2f}" for k in KINDS), f"{r['kl']:.2f}")
    Console().print(table)
    print(f"wrote {out / 'nash_lm.json'} and {out / 'nash_lm.png'} ({result['seconds']:.0f} s)")
