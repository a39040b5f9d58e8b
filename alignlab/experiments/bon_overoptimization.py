"""`alignlab lab bon-overoptimization`: does a conservative reward-model ensemble resist
overoptimization under Best-of-N? (Coste et al. 2023, arXiv:2310.02743; setup of Gao et al. 2022.)

1. sample k responses per train prompt from the policy, label every pair of them (or k/2
   disjoint pairs) with a noisy Bradley-Terry annotator driven by the gold reward (VADER
   sentiment); a share of the prompts, with all their pairs, is held out;
2. train a K-member proxy reward-model ensemble on those labels (alignlab train rm, ensemble K:
   K heads on one frozen backbone), and one fully fine-tuned reward model on the same labels; or,
   with `members: fine-tuned`, K fully fine-tuned models from K seeds (Coste et al.'s ensemble);
   every member is centered on the training responses, so that WCO/UWO compare them on one zero;
3. held-out pairwise accuracy of every selector against the noisy labels, next to the gold
   reward's own accuracy on them (the best any model can do given the label noise);
4. sample m responses per held-out prompt; score them with the gold reward and every model;
5. for N = 1, 2, 4, ..., m: the exact expected gold and proxy reward of the sample BoN-N picks
   with a single member, the mean, WCO (min), UWO (mean - lambda var), and the full model —
   against KL(BoN-N) = log N - (N-1)/N.
Writes pairs.jsonl, candidates.jsonl (every scored Best-of-N sample), bon_overoptimization.json
(with bootstrap intervals over prompts, and each selector's paired difference from the single
member), bon_overoptimization.png and bon_proxy.png.
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
from alignlab.data.errors import DataError
from alignlab.data.prompts import json_objects
from alignlab.eval.metrics import bootstrap_ci
from alignlab.eval.plots import plot_reward_vs_kl
from alignlab.experiments.common import lab_output, sample_texts
from alignlab.experiments.proxies import (ProxyConfig, build_proxies, check_members, check_reusable,
                                          selector_scores)
from alignlab.lab.sentiment import SentimentTask
from alignlab.models.load import load_policy, load_tokenizer
from alignlab.rewards.bon import best_of_n_kl, expected_best_of_n

# settings that made the Best-of-N candidates: a run reusing them must match
CANDIDATE_SAMPLING = ("seed", "train_prompts", "eval_prompts", "samples", "policy", "max_new_tokens")


@dataclass
class BoNOveroptConfig(ProxyConfig):
    train_prompts: int = field(256, "prompts whose sampled pairs label the proxy RM's training data (and held-out pairs)")
    eval_prompts: int = field(32, "held-out prompts for Best-of-N")
    samples: int = field(64, "m samples per held-out prompt (N runs over powers of 2 up to m)")


def _curves(gold: torch.Tensor, selectors: dict[str, torch.Tensor], seed: int = 0) -> list[dict]:
    """gold (P, m); selectors {label: (P, m) scores} -> one point per (selector, N).

    Every point also carries a 95% bootstrap interval of its gold reward over the P prompts, and
    every selector other than "single" the paired per-prompt difference of its gold reward from
    the single member's (`minus_single`) with its interval: prompts are the unit of resampling,
    so this says whether a selector is above or below the single member beyond prompt noise.
    Every point with N > 1 also carries the gain in gold reward from N/2 to N (`gain_from_half`,
    paired per prompt, with its interval): a gain whose interval holds 0 is a flat curve, a
    negative one a fall."""
    points, n, previous = [], 1, {}
    while n <= gold.shape[1]:
        per_prompt = {label: expected_best_of_n(selector, gold, n) for label, selector in selectors.items()}
        for label, selector in selectors.items():
            point = {"label": label, "n": n, "kl": best_of_n_kl(n), "gold_reward": float(per_prompt[label].mean()),
                     "gold_reward_ci": list(bootstrap_ci(per_prompt[label], seed=seed)),
                     "proxy_reward": float(expected_best_of_n(selector, selector, n).mean())}
            if label != "single" and "single" in per_prompt:
                diff = per_prompt[label] - per_prompt["single"]
                point["minus_single"] = float(diff.mean())
                point["minus_single_ci"] = list(bootstrap_ci(diff, seed=seed))
            if n > 1:  # still rising, or flat? the gain of this doubling, paired per prompt
                gain = per_prompt[label] - previous[label]
                point["gain_from_half"] = float(gain.mean())
                point["gain_from_half_ci"] = list(bootstrap_ci(gain, seed=seed))
            points.append(point)
        previous = per_prompt
        n *= 2
    return points


def _members_alone(gold: torch.Tensor, members: torch.Tensor, selectors: dict, seed: int = 0) -> dict:
    """Each member alone as the single proxy (member 0 is "single"): its expected BoN gold at
    every N (`gold_reward`, one curve per member), and each ensemble selector's gold minus the
    average member alone's, paired per prompt with a 95% bootstrap interval
    (`versus_average_member`): the comparison that does not hang on which seed is member 0."""
    ns = [2 ** i for i in range(gold.shape[1].bit_length()) if 2 ** i <= gold.shape[1]]
    curves, versus = [], []
    for n in ns:
        alone = torch.stack([expected_best_of_n(m, gold, n) for m in members])  # (K, P)
        curves.append(alone.mean(1).tolist())
        for label in ("mean", "wco", "uwo"):
            diff = expected_best_of_n(selectors[label], gold, n) - alone.mean(0)
            versus.append({"label": label, "n": n, "minus_average_member": float(diff.mean()),
                           "minus_average_member_ci": list(bootstrap_ci(diff, seed=seed))})
    return {"n": ns, "gold_reward": [list(c) for c in zip(*curves)], "versus_average_member": versus}


def run_bon_overoptimization(cfg: BoNOveroptConfig, *, policy=None, tokenizer=None) -> dict:
    check_members(cfg)
    t0 = time.perf_counter()
    out = lab_output(cfg, "bon-overopt")
    task = SentimentTask()
    train_prompts, eval_prompts = task.split(cfg.train_prompts, cfg.eval_prompts, seed=cfg.seed)
    if cfg.reuse_samples:  # no policy needed: every response is read back
        check_reusable(Path(cfg.reuse_samples), cfg, CANDIDATE_SAMPLING)
        proxies = build_proxies(cfg, out, None, None, task, train_prompts)
        samples = reused_candidates(Path(cfg.reuse_samples), len(eval_prompts), cfg.samples)
    else:
        tokenizer = tokenizer or load_tokenizer(cfg.policy)
        policy = policy or load_policy(cfg.policy)
        proxies = build_proxies(cfg, out, policy, tokenizer, task, train_prompts)
        samples = sample_texts(policy, tokenizer, eval_prompts, cfg.samples, cfg, cfg.seed + 1,
                               "sampling Best-of-N candidates")
    P, m = len(eval_prompts), cfg.samples
    gold = task.gold_reward(samples.texts).view(P, m)
    prompts = [eval_prompts[i] for i in samples.prompt_index]
    members = proxies.source.member_scores(prompts, samples.texts).view(-1, P, m)
    full = proxies.full_source.score(prompts, samples.texts).view(P, m) if proxies.full_source is not None else None
    selectors = selector_scores(members, full, cfg.uwo_coef)
    points = _curves(gold, selectors, seed=cfg.seed)
    with (out / "candidates.jsonl").open("w", encoding="utf-8") as f:  # every scored sample, for re-analysis
        for j, (i, text) in enumerate(zip(samples.prompt_index, samples.texts)):
            f.write(json.dumps({"prompt_index": i, "response": text, "gold": float(gold.view(-1)[j]),
                                "members": members.flatten(1)[:, j].tolist(),
                                **{k: float(v.reshape(-1)[j]) for k, v in selectors.items()}}) + "\n")
    alone = _members_alone(gold, members, selectors, seed=cfg.seed)
    result = {
        "points": points,
        "members_alone": {"n": alone["n"], "gold_reward": alone["gold_reward"]},
        "versus_average_member": alone["versus_average_member"],
        "heldout_accuracy": proxies.accuracy,
        "gold_ceiling_heldout": proxies.ceiling,
        "rm_heldout_accuracy": proxies.accuracy["mean"],
        "label_agreement_with_gold": proxies.gold_agrees,
        "labelled_pairs": len(proxies.records),
        "heldout_pairs": len(proxies.heldout),
        "seconds": time.perf_counter() - t0,
        "config": asdict(cfg),
    }
    (out / "bon_overoptimization.json").write_text(json.dumps(result, indent=1))
    plot_reward_vs_kl(points, out / "bon_overoptimization.png", rewards=("gold_reward",),
                      title=f"Best-of-N, {cfg.ensemble}-member proxy ensemble ({cfg.members}): gold reward")
    plot_reward_vs_kl(points, out / "bon_proxy.png", rewards=("proxy_reward",), title="Best-of-N: proxy reward")
    _print(result, out)
    return result


@dataclass
class _Candidates:
    prompt_index: list[int]
    texts: list[str]


def reused_candidates(folder: Path, n_prompts: int, m: int) -> _Candidates:
    """The Best-of-N candidates of an earlier run (candidates.jsonl: m rows per held-out prompt,
    prompt-major), or a DataError naming the file, line and field."""
    path = folder / "candidates.jsonl"
    rows = list(json_objects(path, path.read_text(encoding="utf-8").splitlines(), "with a prompt_index and response"))
    for n, (row, where) in enumerate(rows):
        if row.get("prompt_index") != n // m:
            raise DataError(f"expected prompt_index {n // m} ({m} candidates per prompt, prompt-major)",
                            field="prompt_index", **where)
        if not isinstance(row.get("response"), str):
            raise DataError("expected a string", field="response", **where)
    if len(rows) != n_prompts * m:
        raise DataError(f"{len(rows)} candidates, expected {n_prompts} prompts x {m}", file=str(path))
    return _Candidates([r["prompt_index"] for r, _ in rows], [r["response"] for r, _ in rows])


def _print(result: dict, out: Path) -> None:
    labels = list(dict.fromkeys(p["label"] for p in result["points"]))
    table = Table(title="Best-of-N: expected gold reward by selector")
    table.add_column("N")
    table.add_column("KL")
    for label in labels:
        table.add_column(label, justify="right")
    for n in sorted({p["n"] for p in result["points"]}):
        row = {p["label"]: p["gold_reward"] for p in result["points"] if p["n"] == n}
        table.add_row(str(n), f"{best_of_n_kl(n):.2f}", *(f"{row[lab]:+.3f}" for lab in labels))
    console = Console()
    console.print(table)
    others = [lab for lab in labels if lab != "single"]
    diffs = Table(title="gold reward minus the single member's, per prompt (95% bootstrap interval over prompts)")
    diffs.add_column("N")
    for label in others:
        diffs.add_column(label, justify="right")
    for n in sorted({p["n"] for p in result["points"]}):
        row = {p["label"]: p for p in result["points"] if p["n"] == n}
        diffs.add_row(str(n), *(f"{row[lab]['minus_single']:+.3f} [{row[lab]['minus_single_ci'][0]:+.3f}, "
                                f"{row[lab]['minus_single_ci'][1]:+.3f}]" for lab in others))
    console.print(diffs)
    gains = Table(title="gold reward gained from N/2 to N, per prompt (95% bootstrap interval): ~0 is flat, < 0 a fall")
    gains.add_column("N")
    for label in labels:
        gains.add_column(label, justify="right")
    for n in sorted({p["n"] for p in result["points"]} - {1}):
        row = {p["label"]: p for p in result["points"] if p["n"] == n}
        gains.add_row(str(n), *(f"{row[lab]['gain_from_half']:+.3f} [{row[lab]['gain_from_half_ci'][0]:+.3f}, "
                                f"{row[lab]['gain_from_half_ci'][1]:+.3f}]" for lab in labels))
    console.print(gains)
    alone = result["members_alone"]
    console.print("each member alone as the proxy, gold reward at N = " + ", ".join(map(str, alone["n"])) + ": "
                  + "; ".join(" ".join(f"{v:+.3f}" for v in curve) for curve in alone["gold_reward"]))
    versus = Table(title="gold reward minus the average member alone's, per prompt (95% bootstrap interval)")
    versus.add_column("N")
    for label in ("mean", "wco", "uwo"):
        versus.add_column(label, justify="right")
    for n in alone["n"]:
        row = {p["label"]: p for p in result["versus_average_member"] if p["n"] == n}
        versus.add_row(str(n), *(f"{row[lab]['minus_average_member']:+.3f} [{row[lab]['minus_average_member_ci'][0]:+.3f}, "
                                 f"{row[lab]['minus_average_member_ci'][1]:+.3f}]" for lab in ("mean", "wco", "uwo")))
    console.print(versus)
    accuracy = ", ".join(f"{k} {v:.3f}" for k, v in result["heldout_accuracy"].items())
    console.print(f"held-out accuracy on {result['heldout_pairs']} noisy labels: {accuracy}; the gold reward itself: "
                  f"{result['gold_ceiling_heldout']:.3f} (the ceiling)")
    console.print(f"written: {out / 'bon_overoptimization.json'}, {out / 'bon_overoptimization.png'}")
