"""`alignlab lab rm-accuracy`: how close does a reward model trained on noisy simulated labels
come to the best any model can do on them? Cross-validated over prompts.

1. k responses per prompt of the sentiment task, sampled from the policy (or read back from a
   `--samples-file`, e.g. the samples.jsonl of an earlier run or the pairs.jsonl of the
   overoptimization labs);
2. every pair of a prompt's responses labelled by the noisy Bradley-Terry annotator;
3. the prompts split into F folds; for each fold, a reward model (`alignlab train rm`, the full
   MiniLM fine-tune by default) is trained on the pairs of the other folds' prompts and scores the
   fold's pairs, which it has never seen (neither prompt nor response); with `seeds` K > 1, K
   models from K seeds are trained and their mean reward scores the pairs (the first model alone
   is reported too);
4. per fold and pooled over all folds (every pair scored exactly once, by the model that did not
   see its prompt): the model's pairwise accuracy on the noisy labels, the gold reward's own
   accuracy on them (the ceiling: the annotator's noise, not the model, is all that stops it), the
   gap, and the model's agreement with the gold order on pairs the gold does not tie. A ranking
   tie counts half (the gold ties on pairs of two neutral responses, whose label is a coin flip).
   The same three averaged over the annotator's noise instead of its drawn labels (`expected_`)
   measure the gap without the labels' sampling noise. 95% bootstrap intervals of the pooled gaps
   resample prompts, the unit that the pairs share.

One held-out draw of ~50 prompts is a noisy estimate (all-pairs comparisons share responses);
cross-validation uses every prompt once. Writes samples.jsonl, pairs.jsonl, rm_accuracy.json.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from alignlab.config import field
from alignlab.eval.metrics import bootstrap_ci, win_outcomes
from alignlab.experiments.common import (LabDataConfig, lab_annotator, lab_output, read_response_groups, sample_texts,
                                         write_response_groups)
from alignlab.lab.annotators import label_groups
from alignlab.lab.sentiment import SentimentTask
from alignlab.models.load import load_policy, load_tokenizer
from alignlab.rewards.model import RewardEnsembleSource
from alignlab.train.reward import RMConfig, train_reward_model


@dataclass
class RMAccuracyConfig(LabDataConfig):
    prompts: int = field(256, "sentiment-task train prompts to sample (ignored with samples_file)")
    samples_per_prompt: int = field(48, "k responses sampled per prompt; every pair of them is labelled (k(k-1)/2 per prompt). More responses per prompt narrow the gap to the ceiling; sampling and training time grow about linearly in k (docs/results/rm-accuracy.md)")
    samples_file: str = field("", "reuse responses instead of sampling: JSON Lines of {prompt, response} rows, or of {prompt, chosen, rejected} pairs (their distinct responses per prompt)")
    folds: int = field(5, "cross-validation folds over prompts (each prompt is held out once)")
    epochs: float = field(3.0, "reward-model epochs per fold")
    learning_rate: float = field(2e-4, "reward-model learning rate (peak, for every fold's model)")
    head_learning_rate: float = field(0.0, "learning rate of the fresh reward head (0: learning_rate)")
    batch_size: int = field(2, "reward-model micro-batch: prompts with group_by_prompt (2 x 48 responses = 2256 pairs), else pairs")
    group_by_prompt: bool = field(True, "train on whole prompts per micro-batch, all their pairs at once, each response encoded once (train rm --group-by-prompt; InstructGPT's batching): k-1 times fewer forwards")
    max_length: int = field(256, "max tokens of prompt + response")
    freeze_backbone: bool = field(False, "train only the head (a frozen MiniLM) instead of fine-tuning it all")
    flip_rate: float = field(0.0, "reward-model loss: the likelihood of labels flipped with this probability (train rm --flip-rate)")
    label_smoothing: float = field(0.0, "reward-model loss: label smoothing (train rm --label-smoothing)")
    seeds: int = field(1, "reward models per fold, from seeds seed..seed+K-1, scored by the mean of their rewards (Coste et al.'s ensemble; K times the training cost); the first model alone is reported too")


def _gap_interval(model_credit: torch.Tensor, gold_credit: torch.Tensor, counts: torch.Tensor,
                  seed: int) -> tuple[float, float]:
    """95% bootstrap interval of the gap sum(gold_credit - model_credit) / sum(counts), resampling
    prompts (per-prompt sums of the credits of `_credits`)."""
    def gap(rows: torch.Tensor) -> float:
        i = rows.long()
        return float((gold_credit[i].sum() - model_credit[i].sum()) / counts[i].sum().clamp_min(1))

    return bootstrap_ci(torch.arange(len(counts)), fn=gap, seed=seed)


def _credits(model: torch.Tensor, gold: torch.Tensor, label_prob: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-pair credit of the model's and the gold's rankings; model/gold: (H, 2) scores of
    (chosen, rejected), label_prob: (H,) the annotator's probability of labelling each pair this
    way round (gold reward, temperature, flips).

    A ranking earns 1 when it agrees with the label, 0 when it does not and 1/2 on a tie: the gold
    reward ties on some pairs (two neutral responses), where the label is a coin flip that any tie
    break gets half of; counting those as misses would put the ceiling below the best achievable.
    The `expected_` credits average over the annotator's noise instead of the label it happened to
    draw: a ranking agreeing with the record's order earns label_prob, the other order
    1 - label_prob."""
    m, g, q = win_outcomes(model[:, 0], model[:, 1]).float(), win_outcomes(gold[:, 0], gold[:, 1]).float(), label_prob.float()
    return {"model": m, "gold": g, "expected_model": m * q + (1 - m) * (1 - q), "expected_gold": g * q + (1 - g) * (1 - q)}


def _fold_stats(model: torch.Tensor, gold: torch.Tensor, label_prob: torch.Tensor) -> dict:
    """Accuracy, ceiling and gap of held-out pairs (see `_credits`), realized and expected, and the
    model's agreement with the gold order on pairs the gold does not tie."""
    c = {k: float(v.mean()) for k, v in _credits(model, gold, label_prob).items()}
    untied = gold[:, 0] != gold[:, 1]
    agree = ((model[:, 0] > model[:, 1]) == (gold[:, 0] > gold[:, 1]))[untied]
    return {"pairs": len(model), "accuracy": c["model"], "ceiling": c["gold"], "gap": c["gold"] - c["model"],
            "expected_accuracy": c["expected_model"], "expected_ceiling": c["expected_gold"],
            "expected_gap": c["expected_gold"] - c["expected_model"],
            "gold_agreement": float(agree.float().mean()) if len(agree) else float("nan")}


def run_rm_accuracy(cfg: RMAccuracyConfig, *, policy=None, tokenizer=None) -> dict:
    if cfg.folds < 2:
        raise ValueError(f"folds must be >= 2, got {cfg.folds}")
    if cfg.seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {cfg.seeds}")
    t0 = time.perf_counter()
    out = lab_output(cfg, "rm-accuracy")
    task = SentimentTask()
    if cfg.samples_file:
        prompts, groups = read_response_groups(cfg.samples_file)
    else:
        prompts, _ = task.split(cfg.prompts, 0, seed=cfg.seed)
        sampled = sample_texts(policy or load_policy(cfg.policy), tokenizer or load_tokenizer(cfg.policy), prompts,
                          cfg.samples_per_prompt, cfg, cfg.seed, "sampling responses")
        groups = [[] for _ in prompts]
        for i, text in zip(sampled.prompt_index, sampled.texts):
            groups[i].append(text)
    write_response_groups(out / "samples.jsonl", prompts, groups)
    if len(prompts) < cfg.folds:
        raise ValueError(f"{len(prompts)} prompts cannot make {cfg.folds} folds")

    annotator = lab_annotator(task, cfg)
    per_prompt = [label_groups([p], [g], annotator) for p, g in zip(prompts, groups)]
    flat = [r for records in per_prompt for r in records]
    gold_flat = torch.stack([task.gold_reward([r.chosen for r in flat]), task.gold_reward([r.rejected for r in flat])], 1)
    gold, label_prob, start = [], [], 0
    for records in per_prompt:
        gold.append(gold_flat[start:start + len(records)])
        label_prob.append(annotator.choice_prob(gold[-1][:, 0], gold[-1][:, 1]))
        start += len(records)
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    fold_of = {i: n % cfg.folds for n, i in enumerate(order)}
    with (out / "pairs.jsonl").open("w", encoding="utf-8") as f:
        for i, records in enumerate(per_prompt):
            for r, (gc, gr) in zip(records, gold[i].tolist()):
                f.write(json.dumps({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected, "gold_chosen": gc,
                                    "gold_rejected": gr, "fold": fold_of[i]}, ensure_ascii=False) + "\n")

    model_scores: list[torch.Tensor | None] = [None] * len(prompts)
    single_scores: list[torch.Tensor | None] = [None] * len(prompts)  # the seed-`seed` model alone
    folds = []
    for fold in range(cfg.folds):
        held = [i for i in range(len(prompts)) if fold_of[i] == fold]
        train = [r for i in range(len(prompts)) if fold_of[i] != fold for r in per_prompt[i]]
        held_records = [r for i in held for r in per_prompt[i]]
        if not train or not held_records:
            raise ValueError(f"fold {fold + 1}: no labelled pairs to {'train on' if not train else 'hold out'} "
                             "(prompts need at least two responses each)")
        print(f"fold {fold + 1}/{cfg.folds}: training on {len(train)} pairs, holding out {len(held)} prompts", flush=True)
        rm_cfg = RMConfig(model=cfg.rm_model, output_dir=str(out / f"rm-fold{fold}"), epochs=cfg.epochs,
                          learning_rate=cfg.learning_rate, head_learning_rate=cfg.head_learning_rate,
                          batch_size=cfg.batch_size, seed=cfg.seed, warmup_ratio=0.05,
                          max_length=cfg.max_length, freeze_backbone=cfg.freeze_backbone, flip_rate=cfg.flip_rate,
                          label_smoothing=cfg.label_smoothing, group_by_prompt=cfg.group_by_prompt)
        dirs = [train_reward_model(dataclasses.replace(rm_cfg, seed=cfg.seed + j, output_dir=str(
            out / (f"rm-fold{fold}" if j == 0 else f"rm-fold{fold}-seed{cfg.seed + j}"))), train_records=train).final_dir
                for j in range(cfg.seeds)]
        source = RewardEnsembleSource(dirs, batch_size=64, max_length=cfg.max_length)
        members = source.member_scores([r.prompt for r in held_records] * 2,
                                       [r.chosen for r in held_records] + [r.rejected for r in held_records]).cpu()
        H = len(held_records)
        scores = torch.stack([members.mean(0)[:H], members.mean(0)[H:]], 1)  # the mean of the K models
        single = torch.stack([members[0, :H], members[0, H:]], 1)
        start = 0
        for i in held:
            model_scores[i] = scores[start:start + len(per_prompt[i])]
            single_scores[i] = single[start:start + len(per_prompt[i])]
            start += len(per_prompt[i])
        fold_gold, fold_q = torch.cat([gold[i] for i in held]), torch.cat([label_prob[i] for i in held])
        stats = {"fold": fold, "prompts": len(held), "train_pairs": len(train),
                 "scored_truncated": source.truncated,  # held-out texts over max_length (training's are in its data report)
                 **_fold_stats(scores, fold_gold, fold_q)}
        if cfg.seeds > 1:
            stats["single_model"] = _fold_stats(single, fold_gold, fold_q)
        folds.append(stats)
        print(f"fold {fold + 1}: accuracy {stats['accuracy']:.3f}, ceiling {stats['ceiling']:.3f}, "
              f"gap {100 * stats['gap']:.1f} points", flush=True)

    gaps = torch.tensor([f["gap"] for f in folds])
    result = {"pooled": _pooled(model_scores, gold, label_prob, cfg.seed), "folds": folds,
              "fold_gap_mean": float(gaps.mean()), "fold_gap_sd": float(gaps.std()),
              "prompts": len(prompts), "responses": sum(map(len, groups)), "labelled_pairs": len(flat),
              "seconds": time.perf_counter() - t0, "config": asdict(cfg)}
    if cfg.seeds > 1:
        result["single_model_pooled"] = _pooled(single_scores, gold, label_prob, cfg.seed)
    (out / "rm_accuracy.json").write_text(json.dumps(result, indent=1))
    _print(result, out)
    return result


def _pooled(model_scores: list[torch.Tensor], gold: list[torch.Tensor], label_prob: list[torch.Tensor], seed: int) -> dict:
    """Statistics of every held-out pair at once (per-prompt (pairs, 2) scores and (pairs,) label
    probabilities), with 95% bootstrap intervals over prompts of the gap and the expected gap."""
    pooled = _fold_stats(torch.cat(model_scores), torch.cat(gold), torch.cat(label_prob))
    per_prompt = [_credits(s, g, q) for s, g, q in zip(model_scores, gold, label_prob)]
    sums = {k: torch.stack([c[k].sum() for c in per_prompt]) for k in per_prompt[0]}
    counts = torch.tensor([float(len(g)) for g in gold])
    return {**pooled, "gap_ci": list(_gap_interval(sums["model"], sums["gold"], counts, seed)),
            "expected_gap_ci": list(_gap_interval(sums["expected_model"], sums["expected_gold"], counts, seed))}


def _print(result: dict, out: Path) -> None:
    table = Table(title="Reward-model accuracy on noisy labels vs the gold reward's own (the ceiling), per held-out fold")
    for name in ("fold", "prompts", "pairs", "accuracy", "ceiling", "gap (points)", "expected gap", "agrees with gold"):
        table.add_column(name, justify="right")
    for f in result["folds"]:
        table.add_row(str(f["fold"] + 1), str(f["prompts"]), str(f["pairs"]), f"{f['accuracy']:.3f}", f"{f['ceiling']:.3f}",
                      f"{100 * f['gap']:.1f}", f"{100 * f['expected_gap']:.1f}", f"{f['gold_agreement']:.3f}")
    p = result["pooled"]
    table.add_row("all", str(result["prompts"]), str(p["pairs"]), f"{p['accuracy']:.3f}", f"{p['ceiling']:.3f}",
                  f"{100 * p['gap']:.1f} [{100 * p['gap_ci'][0]:.1f}, {100 * p['gap_ci'][1]:.1f}]",
                  f"{100 * p['expected_gap']:.1f} [{100 * p['expected_gap_ci'][0]:.1f}, {100 * p['expected_gap_ci'][1]:.1f}]",
                  f"{p['gold_agreement']:.3f}")
    console = Console()
    console.print(table)
    if "single_model_pooled" in result:
        s, k = result["single_model_pooled"], result["config"]["seeds"]
        console.print(f"the table scores with the mean of {k} models per fold; the first model alone: accuracy "
                      f"{s['accuracy']:.3f}, gap {100 * s['gap']:.1f} [{100 * s['gap_ci'][0]:.1f}, {100 * s['gap_ci'][1]:.1f}] points, "
                      f"expected gap {100 * s['expected_gap']:.1f} [{100 * s['expected_gap_ci'][0]:.1f}, {100 * s['expected_gap_ci'][1]:.1f}]")
    console.print(f"gap across folds: {100 * result['fold_gap_mean']:.1f} ± {100 * result['fold_gap_sd']:.1f} points "
                  f"(mean ± sd); written: {out / 'rm_accuracy.json'}")
