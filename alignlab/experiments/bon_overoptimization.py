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

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from alignlab.config import field
from alignlab.experiments.common import LabDataConfig, lab_output, sample_texts
from alignlab.rewards.aggregate import aggregate
from alignlab.rewards.bon import best_of_n_kl, expected_best_of_n


@dataclass
class BoNOveroptConfig(LabDataConfig):
    train_prompts: int = field(256, "prompts whose sampled pairs label the proxy RM's training data (and held-out pairs)")
    pairs_per_prompt: int = field(3, "samples per train prompt / 2 (k = 2 x this responses are sampled)")
    all_pairs: bool = field(True, "label every pair of a prompt's k samples (k(k-1)/2 comparisons of the same samples), not k/2 disjoint pairs")
    eval_prompts: int = field(32, "held-out prompts for Best-of-N")
    samples: int = field(64, "m samples per held-out prompt (N runs over powers of 2 up to m)")
    ensemble: int = field(4, "proxy ensemble members")
    members: str = field("heads", "what the members are: heads (K heads on one frozen backbone: cheap, as `train rm --ensemble K`) | fine-tuned (K fully fine-tuned backbones, seeds seed..seed+K-1, with the full RM's settings: Coste et al.'s ensemble, K times the cost; member 0 is then the full RM)")
    uwo_coef: float = field(1.0, "lambda of UWO (mean - lambda * variance)")
    rm_epochs: float = field(4.0, "ensemble epochs (heads on a frozen backbone)")
    rm_learning_rate: float = field(1e-2, "ensemble (heads) learning rate")
    rm_batch_size: int = field(16, "reward-model batch size")
    heldout_fraction: float = field(0.2, "share of the train prompts held out, with all their pairs, to measure accuracy")
    full_rm: bool = field(True, "also fine-tune one full reward model (backbone included) on the same labels")
    full_rm_epochs: float = field(3.0, "full reward model epochs")
    full_rm_learning_rate: float = field(1e-4, "full reward model learning rate (the rm-accuracy lab's measured best)")
    full_rm_head_learning_rate: float = field(0.0, "full reward model's head learning rate (0: full_rm_learning_rate)")
    reuse_samples: str = field("", "output folder of an earlier run: label (and, for Best-of-N, score) its sampled responses (samples.jsonl, or the distinct responses of pairs.jsonl; candidates.jsonl) instead of sampling again, so that proxies are compared on the same samples; policy and max_new_tokens must match, for Best-of-N also seed, prompts and samples, and pairs_per_prompt be at most its (the first 2 x pairs_per_prompt responses of each prompt are used)")


def _selectors(members: torch.Tensor, full: torch.Tensor | None, cfg: BoNOveroptConfig) -> dict[str, torch.Tensor]:
    """members (K, ...) member scores, full (...) or None -> {selector: scores (...)}."""
    flat = members.flatten(1)
    out = {"single": members[0], "mean": aggregate(flat, "mean").view_as(members[0]),
           "wco": aggregate(flat, "wco").view_as(members[0]),
           "uwo": aggregate(flat, "uwo", uwo_coef=cfg.uwo_coef).view_as(members[0])}
    if full is not None:
        out["full"] = full
    return out


def _curves(gold: torch.Tensor, selectors: dict[str, torch.Tensor], seed: int = 0) -> list[dict]:
    """gold (P, m); selectors {label: (P, m) scores} -> one point per (selector, N).

    Every point also carries a 95% bootstrap interval of its gold reward over the P prompts, and
    every selector other than "single" the paired per-prompt difference of its gold reward from
    the single member's (`minus_single`) with its interval: prompts are the unit of resampling,
    so this says whether a selector is above or below the single member beyond prompt noise.
    Every point with N > 1 also carries the gain in gold reward from N/2 to N (`gain_from_half`,
    paired per prompt, with its interval): a gain whose interval holds 0 is a flat curve, a
    negative one a fall."""
    from alignlab.eval.metrics import bootstrap_ci

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
    from alignlab.eval.metrics import bootstrap_ci

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


def _check_members(cfg) -> None:
    if cfg.members not in ("heads", "fine-tuned"):
        raise ValueError(f"members must be heads or fine-tuned, got {cfg.members!r}")


@dataclass
class Proxies:
    """The labelled pairs and the proxy reward models trained on them (shared by the lab's
    overoptimization experiments)."""

    records: list
    heldout: list
    gold_agrees: float
    ceiling: float
    source: object  # RewardModelSource (heads) or RewardEnsembleSource (fine-tuned models) of the K members
    full_source: object | None  # RewardModelSource of the fully fine-tuned model
    accuracy: dict


def build_proxies(cfg, out: Path, policy, tokenizer, task, train_prompts: list) -> Proxies:
    """Steps 1-3: sample pairs, label them with the noisy annotator, train the proxies, measure
    their held-out accuracy next to the gold reward's (the ceiling). Writes out/pairs.jsonl."""
    from alignlab.lab.annotators import label_groups
    from alignlab.experiments.common import lab_annotator
    from alignlab.rewards.model import RewardEnsembleSource, RewardModelSource
    from alignlab.train.reward import RMConfig, train_reward_model

    _check_members(cfg)
    from alignlab.experiments.rm_accuracy import write_response_groups

    k = 2 * cfg.pairs_per_prompt
    if cfg.reuse_samples:
        check_reusable(Path(cfg.reuse_samples), cfg, _TRAIN_SAMPLING)
        texts = dict(enumerate(reused_train_samples(Path(cfg.reuse_samples), train_prompts, k)))
    else:
        sampled = sample_texts(policy, tokenizer, train_prompts, k, cfg, cfg.seed, "sampling RM training pairs")
        texts = {}
        for i, t in zip(sampled.prompt_index, sampled.texts):
            texts.setdefault(i, []).append(t)
    # in sampling order, for --reuse-samples
    write_response_groups(out / "samples.jsonl", train_prompts, [texts.get(i, []) for i in range(len(train_prompts))])
    # held-out prompts, with all their samples: no held-out response or prompt is seen in training
    order = torch.randperm(len(train_prompts), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_eval = max(1, round(cfg.heldout_fraction * len(train_prompts)))
    annotator = lab_annotator(task, cfg)

    def label(prompt_ids: list[int]) -> list:
        return label_groups([train_prompts[i] for i in prompt_ids], [texts.get(i, []) for i in prompt_ids],
                            annotator, all_pairs=cfg.all_pairs)

    heldout, train = label(sorted(order[:n_eval])), label(sorted(order[n_eval:]))
    records = train + heldout
    gold_chosen, gold_rejected = task.gold_reward([r.chosen for r in records]), task.gold_reward([r.rejected for r in records])
    with (out / "pairs.jsonl").open("w", encoding="utf-8") as f:  # the labelled data, for other RMs to train on
        for n, (r, gc, gr) in enumerate(zip(records, gold_chosen.tolist(), gold_rejected.tolist())):
            f.write(json.dumps({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected, "gold_chosen": gc,
                                "gold_rejected": gr, "split": "train" if n < len(train) else "heldout"}) + "\n")
    rm_cfg = RMConfig(model=cfg.rm_model, output_dir=str(out / "rm"), ensemble=cfg.ensemble, epochs=cfg.rm_epochs,
                      learning_rate=cfg.rm_learning_rate, batch_size=cfg.rm_batch_size, seed=cfg.seed,
                      warmup_ratio=0.05, max_length=256)
    full_cfg = dataclasses.replace(rm_cfg, output_dir=str(out / "rm-full"), ensemble=1, epochs=cfg.full_rm_epochs,
                                   learning_rate=cfg.full_rm_learning_rate, head_learning_rate=cfg.full_rm_head_learning_rate)
    full_source = None
    if cfg.members == "fine-tuned":  # K full fine-tunes from different seeds; member 0 is the full RM itself
        dirs = [train_reward_model(dataclasses.replace(full_cfg, output_dir=str(out / f"rm-member{k}"), seed=cfg.seed + k),
                                   train_records=train).final_dir for k in range(cfg.ensemble)]
        source = RewardEnsembleSource(dirs, batch_size=64)
    else:
        source = RewardModelSource(train_reward_model(rm_cfg, train_records=train).final_dir, batch_size=64)
        if cfg.full_rm:
            full_source = RewardModelSource(train_reward_model(full_cfg, train_records=train).final_dir, batch_size=64)
    from alignlab.eval.metrics import win_outcomes

    gold_right = win_outcomes(gold_chosen, gold_rejected)  # a gold tie (a coin-flip label) counts half
    return Proxies(records, heldout, float(gold_right.mean()), float(gold_right[len(train):].mean()),
                   source, full_source, _heldout_accuracy(heldout, source, full_source, cfg))


def run_bon_overoptimization(cfg: BoNOveroptConfig, *, policy=None, tokenizer=None) -> dict:
    from alignlab.eval.plots import plot_reward_vs_kl
    from alignlab.lab.sentiment import SentimentTask
    from alignlab.models.load import load_policy, load_tokenizer

    _check_members(cfg)
    t0 = time.perf_counter()
    out = lab_output(cfg, "bon-overopt")
    task = SentimentTask()
    train_prompts, eval_prompts = task.split(cfg.train_prompts, cfg.eval_prompts, seed=cfg.seed)
    if cfg.reuse_samples:  # no policy needed: every response is read back
        check_reusable(Path(cfg.reuse_samples), cfg, _CANDIDATE_SAMPLING)
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
    selectors = _selectors(members, full, cfg)
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


_TRAIN_SAMPLING = ("policy", "max_new_tokens")  # the train prompts themselves are checked one by one
_CANDIDATE_SAMPLING = ("seed", "train_prompts", "eval_prompts", "samples", "policy", "max_new_tokens")


def check_reusable(folder: Path, cfg, settings: tuple[str, ...]) -> None:
    """The earlier run in `folder` (bon-overoptimization or overoptimization) sampled with the same
    `settings`, and at least as many responses per train prompt (pairs_per_prompt), or a
    ValueError says which settings differ."""
    found = [folder / name for name in ("bon_overoptimization.json", "overoptimization.json") if (folder / name).is_file()]
    if not found:
        raise ValueError(f"reuse_samples: no bon_overoptimization.json or overoptimization.json in {folder} "
                         "(the folder of a finished run)")
    earlier = json.loads(found[0].read_text())["config"]
    differ = [f"{k}: {earlier.get(k)!r} there, {getattr(cfg, k)!r} here" for k in settings
              if earlier.get(k) != getattr(cfg, k)]
    if earlier.get("pairs_per_prompt", 0) < cfg.pairs_per_prompt:
        differ.append(f"pairs_per_prompt: {earlier.get('pairs_per_prompt')!r} there, {cfg.pairs_per_prompt!r} here "
                      "(at most as many as there)")
    if differ:
        raise ValueError(f"reuse_samples: {folder} sampled with other settings ({'; '.join(differ)})")


def reused_train_samples(folder: Path, prompts: list, k: int) -> list[list[str]]:
    """The first k responses of each train prompt from an earlier run: its samples.jsonl (in
    sampling order) or, for runs before that file, the distinct responses of its pairs.jsonl (in
    order of first appearance). A prompt with fewer than k responses is a DataError."""
    from alignlab.data.errors import DataError
    from alignlab.experiments.rm_accuracy import read_response_groups

    path = folder / "samples.jsonl" if (folder / "samples.jsonl").is_file() else folder / "pairs.jsonl"
    found, groups = read_response_groups(path)
    by_prompt = {json.dumps(p, sort_keys=True): g for p, g in zip(found, groups)}
    out = []
    for prompt in prompts:
        group = by_prompt.get(json.dumps(prompt, sort_keys=True), [])
        if len(group) < k:
            raise DataError(f"{len(group)} responses to the train prompt {str(prompt)[:60]!r}, expected {k}",
                            file=str(path))
        out.append(group[:k])
    return out


@dataclass
class _Candidates:
    prompt_index: list[int]
    texts: list[str]


def reused_candidates(folder: Path, n_prompts: int, m: int) -> _Candidates:
    """The Best-of-N candidates of an earlier run (candidates.jsonl: m rows per held-out prompt,
    prompt-major), or a DataError naming the file, line and field."""
    from alignlab.data.errors import DataError
    from alignlab.data.prompts import json_objects

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


def _heldout_accuracy(heldout, source, full_source, cfg: BoNOveroptConfig) -> dict[str, float]:
    """Share of held-out labelled pairs each selector ranks the annotator's way (ties count half)."""
    from alignlab.eval.metrics import win_outcomes

    prompts = [r.prompt for r in heldout] * 2
    texts = [r.chosen for r in heldout] + [r.rejected for r in heldout]
    members = source.member_scores(prompts, texts)  # (K, 2H)
    full = full_source.score(prompts, texts) if full_source is not None else None
    H = len(heldout)
    return {label: float(win_outcomes(s[:H], s[H:]).mean()) for label, s in _selectors(members, full, cfg).items()}


def _print(result: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

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
