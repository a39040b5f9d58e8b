"""Proxy reward models trained on simulated labels, as the overoptimization experiments (`lab
bon-overoptimization`, `lab overoptimization`) use them: sample pairs from the policy, label them
with the noisy annotator, train a K-member ensemble (and one fully fine-tuned model), measure
their held-out accuracy next to the gold reward's, and read the ensemble through a selector
(single member, mean, WCO, UWO; Coste et al. 2023, arXiv:2310.02743)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.config import field
from alignlab.data.errors import DataError
from alignlab.eval.metrics import win_outcomes
from alignlab.experiments.common import (LabDataConfig, lab_annotator, read_response_groups, sample_texts,
                                         write_response_groups)
from alignlab.lab.annotators import label_groups
from alignlab.rewards.aggregate import aggregate
from alignlab.rewards.model import RewardEnsembleSource, RewardModelSource
from alignlab.train.reward import RMConfig, train_reward_model

MEMBERS = ("heads", "fine-tuned")
TRAIN_SAMPLING = ("policy", "max_new_tokens")  # settings that made the train samples; prompts are checked one by one


@dataclass
class ProxyConfig(LabDataConfig):
    """The labelled data and the proxy reward models, as `build_proxies` reads them."""

    pairs_per_prompt: int = field(3, "samples per train prompt / 2 (k = 2 x this responses are sampled)")
    all_pairs: bool = field(True, "label every pair of a prompt's k samples (k(k-1)/2 comparisons of the same samples), not k/2 disjoint pairs")
    ensemble: int = field(4, "proxy ensemble members")
    members: str = field("heads", "what the members are: heads (K heads on one frozen backbone: cheap, as `train rm --ensemble K`) | fine-tuned (K fully fine-tuned backbones, seeds seed..seed+K-1, with the full RM's settings: Coste et al.'s ensemble, K times the cost; member 0 is then the full RM)")
    uwo_coef: float = field(1.0, "lambda of UWO (mean - lambda * variance)")
    rm_epochs: float = field(4.0, "ensemble epochs (heads on a frozen backbone)")
    rm_learning_rate: float = field(1e-2, "ensemble (heads) learning rate")
    rm_batch_size: int = field(16, "reward-model batch size")
    heldout_fraction: float = field(0.2, "share of the train prompts held out, with all their pairs, to measure accuracy")
    full_rm: bool = field(True, "also fine-tune one full reward model (backbone included) on the same labels")
    full_rm_epochs: float = field(3.0, "full reward model epochs")
    full_rm_learning_rate: float = field(1e-4, "full reward model learning rate (with 3 epochs, the rate that fits MiniLM best on a few thousand lab pairs: docs/results/rm-accuracy.md)")
    full_rm_head_learning_rate: float = field(0.0, "full reward model's head learning rate (0: full_rm_learning_rate)")
    reuse_samples: str = field("", "output folder of an earlier run: label (and, for Best-of-N, score) its sampled responses (samples.jsonl, or the distinct responses of pairs.jsonl; candidates.jsonl) instead of sampling again, so that proxies are compared on the same samples; policy and max_new_tokens must match, for Best-of-N also seed, prompts and samples, and pairs_per_prompt be at most its (the first 2 x pairs_per_prompt responses of each prompt are used)")


def check_members(cfg: ProxyConfig) -> None:
    if cfg.members not in MEMBERS:
        raise ValueError(f"members must be heads or fine-tuned, got {cfg.members!r}")


def selector_scores(members: torch.Tensor, full: torch.Tensor | None, uwo_coef: float) -> dict[str, torch.Tensor]:
    """members (K, ...) member scores, full (...) or None -> {selector: scores (...)}."""
    flat = members.flatten(1)
    out = {"single": members[0], "mean": aggregate(flat, "mean").view_as(members[0]),
           "wco": aggregate(flat, "wco").view_as(members[0]),
           "uwo": aggregate(flat, "uwo", uwo_coef=uwo_coef).view_as(members[0])}
    if full is not None:
        out["full"] = full
    return out


@dataclass
class Proxies:
    """The labelled pairs and the proxy reward models trained on them."""

    records: list
    heldout: list
    gold_agrees: float
    ceiling: float
    source: object  # RewardModelSource (heads) or RewardEnsembleSource (fine-tuned models) of the K members
    full_source: object | None  # RewardModelSource of the fully fine-tuned model
    accuracy: dict


def build_proxies(cfg: ProxyConfig, out: Path, policy, tokenizer, task, train_prompts: list) -> Proxies:
    """Sample pairs, label them with the noisy annotator, train the proxies, measure their
    held-out accuracy next to the gold reward's (the ceiling). Writes out/samples.jsonl and
    out/pairs.jsonl."""
    check_members(cfg)
    k = 2 * cfg.pairs_per_prompt
    if cfg.reuse_samples:
        check_reusable(Path(cfg.reuse_samples), cfg, TRAIN_SAMPLING)
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
    source, full_source = _train_proxies(cfg, out, train)
    gold_right = win_outcomes(gold_chosen, gold_rejected)  # a gold tie (a coin-flip label) counts half
    return Proxies(records, heldout, float(gold_right.mean()), float(gold_right[len(train):].mean()),
                   source, full_source, heldout_accuracy(heldout, source, full_source, cfg.uwo_coef))


def _train_proxies(cfg: ProxyConfig, out: Path, train: list):
    """(the K members' source, the full model's source or None), trained on the `train` pairs."""
    rm_cfg = RMConfig(model=cfg.rm_model, output_dir=str(out / "rm"), ensemble=cfg.ensemble, epochs=cfg.rm_epochs,
                      learning_rate=cfg.rm_learning_rate, batch_size=cfg.rm_batch_size, seed=cfg.seed,
                      warmup_ratio=0.05, max_length=256)
    full_cfg = dataclasses.replace(rm_cfg, output_dir=str(out / "rm-full"), ensemble=1, epochs=cfg.full_rm_epochs,
                                   learning_rate=cfg.full_rm_learning_rate, head_learning_rate=cfg.full_rm_head_learning_rate)
    if cfg.members == "fine-tuned":  # K full fine-tunes from different seeds; member 0 is the full RM itself
        dirs = [train_reward_model(dataclasses.replace(full_cfg, output_dir=str(out / f"rm-member{k}"), seed=cfg.seed + k),
                                   train_records=train).final_dir for k in range(cfg.ensemble)]
        return RewardEnsembleSource(dirs, batch_size=64), None
    source = RewardModelSource(train_reward_model(rm_cfg, train_records=train).final_dir, batch_size=64)
    if not cfg.full_rm:
        return source, None
    return source, RewardModelSource(train_reward_model(full_cfg, train_records=train).final_dir, batch_size=64)


def heldout_accuracy(heldout, source, full_source, uwo_coef: float) -> dict[str, float]:
    """Share of held-out labelled pairs each selector ranks the annotator's way (ties count half)."""
    prompts = [r.prompt for r in heldout] * 2
    texts = [r.chosen for r in heldout] + [r.rejected for r in heldout]
    members = source.member_scores(prompts, texts)  # (K, 2H)
    full = full_source.score(prompts, texts) if full_source is not None else None
    H = len(heldout)
    return {label: float(win_outcomes(s[:H], s[H:]).mean())
            for label, s in selector_scores(members, full, uwo_coef).items()}


def check_reusable(folder: Path, cfg: ProxyConfig, settings: tuple[str, ...]) -> None:
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
