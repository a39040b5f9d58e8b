"""`alignlab lab judge-agreement`: how often do three preference sources prefer the response with
the higher gold reward, on held-out prompts of the sentiment task?

1. k responses per prompt sampled from the policy (or read from `samples_file`) for
   `train_prompts` + `test_prompts` disjoint prompts;
2. every pair of a train prompt's responses labelled by the lab's noisy Bradley-Terry annotator;
3. on those same labelled pairs, with the same backbone and training settings: a Bradley-Terry
   reward model (`train rm`, judged through Bradley-Terry) and a pairwise preference model
   (`train pm`); the LLM judge (`judge`, the embedded SmolLM2 by default) is used as it is;
4. every pair of a test prompt's responses whose gold rewards differ is judged by each source:
   agreement = the share of pairs where it prefers the higher-gold response (a judgement of
   exactly ½ counts half), with a 95% bootstrap interval over test prompts, and each learned
   source's paired difference from the reward model on the same pairs.

Writes samples.jsonl, judge_agreement.json, judge_agreement.png (and the two trained models) under
`output`.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass

import torch

from alignlab.config import field
from alignlab.eval.metrics import bootstrap_ci
from alignlab.experiments.common import (LabDataConfig, lab_annotator, lab_output, read_response_groups, sample_texts,
                                         write_response_groups)
from alignlab.lab.annotators import label_groups
from alignlab.lab.sentiment import SentimentTask
from alignlab.preferences import RewardPreference, build_preference_source
from alignlab.preferences.pairwise import PairwisePreference
from alignlab.rewards.model import RewardModelSource
from alignlab.train.pm import PMConfig, train_pm
from alignlab.train.reward import RMConfig, train_reward_model


@dataclass
class JudgeAgreementConfig(LabDataConfig):
    train_prompts: int = field(64, "sentiment-task prompts whose labelled pairs train the reward and preference models")
    test_prompts: int = field(32, "held-out prompts whose pairs every source judges")
    samples_per_prompt: int = field(6, "k responses per prompt; every pair of them is labelled (train) or judged (test)")
    samples_file: str = field("", "reuse responses: JSON Lines of {prompt, response} rows (the first train_prompts prompts train, the next test_prompts are held out)")
    judge: str = field("judge:embedded", "the LLM judge (any preference spec)")
    epochs: float = field(3.0, "epochs of both trained models")
    learning_rate: float = field(1e-4, "peak learning rate of both trained models")
    batch_size: int = field(16, "pairs per micro-batch of both trained models")
    max_length: int = field(256, "max tokens of prompt + response (the preference model's: prompt + both responses)")


def held_out_pairs(prompts: list, groups: list[list[str]], gold) -> list[tuple[int, str, str, float]]:
    """(prompt index, a, b, gold(a) − gold(b)) for every pair of a prompt's responses with
    different gold rewards; a is the earlier response (no order chosen by the gold)."""
    out = []
    for i, group in enumerate(groups):
        scores = gold(group).tolist()
        for x, y in itertools.combinations(range(len(group)), 2):
            if scores[x] != scores[y]:
                out.append((i, group[x], group[y], scores[x] - scores[y]))
    return out


def agreement_credit(p: torch.Tensor, gold_diff: torch.Tensor) -> torch.Tensor:
    """(N,) 1 when the judgement prefers the higher-gold response, ½ at p = ½, else 0."""
    return ((p > 0.5) == (gold_diff > 0)).double() * (p != 0.5).double() + 0.5 * (p == 0.5).double()


def prompt_interval(credit: torch.Tensor, prompt_of: torch.Tensor, seed: int) -> list[float]:
    """95% bootstrap interval of the pooled mean of `credit`, resampling prompts."""
    prompts = prompt_of.unique()
    sums = torch.stack([credit[prompt_of == i].sum() for i in prompts])
    counts = torch.stack([(prompt_of == i).sum().double() for i in prompts])

    def pooled(rows: torch.Tensor) -> float:
        i = rows.long()
        return float(sums[i].sum() / counts[i].sum())

    return list(bootstrap_ci(torch.arange(len(prompts)), fn=pooled, seed=seed))


def _samples(cfg: JudgeAgreementConfig, task: SentimentTask, policy, tokenizer) -> tuple[list, list[list[str]]]:
    if cfg.samples_file:
        prompts, groups = read_response_groups(cfg.samples_file)
        if len(prompts) < cfg.train_prompts + cfg.test_prompts:
            raise ValueError(f"{cfg.samples_file}: {len(prompts)} prompts, fewer than train_prompts + test_prompts")
        n = cfg.train_prompts + cfg.test_prompts
        return prompts[:n], groups[:n]
    from alignlab.models.load import load_policy, load_tokenizer

    train, test = task.split(cfg.train_prompts, cfg.test_prompts, seed=cfg.seed)
    prompts = train + test
    sampled = sample_texts(policy or load_policy(cfg.policy), tokenizer or load_tokenizer(cfg.policy), prompts,
                           cfg.samples_per_prompt, cfg, cfg.seed, "sampling responses")
    groups = [[] for _ in prompts]
    for i, text in zip(sampled.prompt_index, sampled.texts):
        groups[i].append(text)
    return prompts, groups


def run_judge_agreement(cfg: JudgeAgreementConfig, *, policy=None, tokenizer=None) -> dict:
    if cfg.train_prompts < 1 or cfg.test_prompts < 1 or cfg.samples_per_prompt < 2:
        raise ValueError("judge-agreement needs train_prompts >= 1, test_prompts >= 1 and samples_per_prompt >= 2")
    judge = build_preference_source(cfg.judge)  # a bad spec fails before any sampling
    t0 = time.perf_counter()
    out = lab_output(cfg, "judge-agreement")
    task = SentimentTask()
    prompts, groups = _samples(cfg, task, policy, tokenizer)
    write_response_groups(out / "samples.jsonl", prompts, groups)
    n_train = cfg.train_prompts
    train = label_groups(prompts[:n_train], groups[:n_train], lab_annotator(task, cfg))
    common = dict(model=cfg.rm_model, epochs=cfg.epochs, learning_rate=cfg.learning_rate, batch_size=cfg.batch_size,
                  seed=cfg.seed, warmup_ratio=0.05, max_length=cfg.max_length, progress=False)
    timings = {}
    start = time.perf_counter()
    rm_dir = train_reward_model(RMConfig(output_dir=str(out / "rm"), **common), train_records=train).final_dir
    timings["train_rm"] = time.perf_counter() - start
    start = time.perf_counter()
    pm_dir = train_pm(PMConfig(output_dir=str(out / "pm"), **common), train_records=train).final_dir
    timings["train_pm"] = time.perf_counter() - start

    test = held_out_pairs(prompts[n_train:], groups[n_train:], task.gold_reward)
    if not test:
        raise ValueError("no held-out pair with different gold rewards to judge")
    prompt_of = torch.tensor([i for i, *_ in test])
    xs, a, b = [prompts[n_train + i] for i, *_ in test], [t[1] for t in test], [t[2] for t in test]
    gold_diff = torch.tensor([t[3] for t in test], dtype=torch.float64)
    sources = {"reward model (Bradley-Terry)": RewardPreference(RewardModelSource(rm_dir, max_length=cfg.max_length)),
               "pairwise preference model": PairwisePreference(pm_dir, max_length=cfg.max_length),
               f"LLM judge ({cfg.judge})": judge}
    results, credits = {}, {}
    for name, source in sources.items():
        start = time.perf_counter()
        p = source.prefer(xs, a, b)
        seconds = time.perf_counter() - start
        credits[name] = agreement_credit(p.double(), gold_diff)
        results[name] = {"agreement": credits[name].mean().item(),
                         "interval": prompt_interval(credits[name], prompt_of, cfg.seed),
                         "ties": int((p == 0.5).sum()), "judge_seconds": seconds}
        print(f"{name}: agreement {results[name]['agreement']:.3f} {results[name]['interval']}", flush=True)
    rm_name = next(iter(sources))
    for name in list(sources)[1:]:
        diff = credits[name] - credits[rm_name]
        results[name]["minus_reward_model"] = diff.mean().item()
        results[name]["minus_reward_model_interval"] = prompt_interval(diff, prompt_of, cfg.seed)
    result = {"sources": results, "train_pairs": len(train), "test_pairs": len(test),
              "test_prompts": len(prompts) - n_train, "timings": timings, "seconds": time.perf_counter() - t0,
              "config": asdict(cfg)}
    (out / "judge_agreement.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "judge_agreement.png")
    print(render(result))
    return result


def render(result: dict) -> str:
    lines = [f"agreement with the gold preference on {result['test_pairs']} held-out pairs "
             f"({result['test_prompts']} prompts; trained on {result['train_pairs']} labelled pairs)"]
    for name, r in result["sources"].items():
        lo, hi = r["interval"]
        extra = ""
        if "minus_reward_model" in r:
            dlo, dhi = r["minus_reward_model_interval"]
            extra = f"   vs RM {r['minus_reward_model']:+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
        lines.append(f"  {name:<40}{r['agreement']:.3f} [{lo:.3f}, {hi:.3f}]{extra}")
    return "\n".join(lines)


def plot(result: dict, path) -> None:
    """Each source's agreement with its 95% interval; chance (½) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["sources"])
    values = [result["sources"][n]["agreement"] for n in names]
    # a percentile interval need not contain the point estimate: bars never go negative
    low = [max(0.0, v - result["sources"][n]["interval"][0]) for v, n in zip(values, names)]
    high = [max(0.0, result["sources"][n]["interval"][1] - v) for v, n in zip(values, names)]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.errorbar(range(len(names)), values, yerr=[low, high], fmt="o", capsize=4)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(names)), names, rotation=15, ha="right")
    ax.set_ylabel("agreement with the gold preference")
    ax.set_title(f"{result['test_pairs']} held-out pairs, {result['test_prompts']} prompts (95% bootstrap)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
