"""Best-of-N: keep the highest-scoring of N samples, and the exact expected outcome of BoN-n from
m >= n samples (used to draw overoptimization curves without re-sampling for every n)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from alignlab.data.errors import DataError
from alignlab.data.prompts import read_prompt_rows
from alignlab.models.load import load_policy, load_tokenizer
from alignlab.rollout.base import SamplingParams
from alignlab.rollout.hf import generate_texts
from alignlab.train.run import refuse_existing_output


def best_of_n_kl(n: int) -> float:
    """KL(BoN-n || base) = log n - (n - 1) / n (Stiennon et al. 2020; Gao et al. 2022)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    return math.log(n) - (n - 1) / n


def select_best(scores: Tensor) -> Tensor:
    """(P, N) scores -> (P,) index of the best sample per prompt (first on ties)."""
    return scores.argmax(dim=-1)


def expected_best_of_n(selector: Tensor, values: Tensor, n: int) -> Tensor:
    """Exact E[value of the sample BoN-n picks by `selector`], over all n-subsets of the m samples
    per prompt: the i-th lowest selector score (0-based) is the subset's best with probability
    C(i, n-1) / C(m, n). selector/values: (P, m) -> (P,). Ties in `selector` are broken by index."""
    P, m = selector.shape
    if not 1 <= n <= m:
        raise ValueError(f"n must be in [1, {m}], got {n}")
    order = selector.argsort(dim=-1, stable=True)  # ascending
    sorted_values = values.gather(-1, order).double()
    i = torch.arange(m, dtype=torch.float64)
    # log C(i, n-1) - log C(m, n), zero probability where i < n-1
    log_w = torch.lgamma(i + 1) - torch.lgamma(i - n + 2) - torch.lgamma(torch.tensor(n, dtype=torch.float64))
    log_w = log_w - (torch.lgamma(torch.tensor(m + 1.0)) - torch.lgamma(torch.tensor(n + 1.0)) - torch.lgamma(torch.tensor(m - n + 1.0)))
    w = torch.where(i >= n - 1, log_w.exp(), torch.zeros_like(i))
    return (sorted_values * w).sum(-1)


def read_prompts(path) -> list:
    """Prompts from a .jsonl file with a `prompt` field (text or chat messages) per line, or a
    plain .txt file with one prompt per line (`alignlab.data.prompts.read_prompt_rows`)."""
    try:
        return [row["prompt"] for row in read_prompt_rows(path)]
    except DataError as exc:  # `alignlab bon` has always reported bad prompts as usage errors (exit 2)
        raise ValueError(str(exc)) from None


def run_best_of_n(policy: str, reward_source, prompts: list, *, n: int, output, max_new_tokens: int = 128,
                  temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 64,
                  overwrite: bool = False) -> dict:
    """Sample n responses per prompt, keep the best by `reward_source`, write them as jsonl
    (`prompt`, `completion`, `reward`, plus the mean reward of all n) for SFT / rejection sampling.
    An existing `output` is refused, or with `overwrite` moved aside to NAME.old-<time>.jsonl."""
    refuse_existing_output(output, overwrite)

    tokenizer, model = load_tokenizer(policy), load_policy(policy)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    out = generate_texts(model, tokenizer, prompts, params, batch_size=batch_size, progress="sampling")
    scores = reward_source.score([prompts[i] for i in out.prompt_index], out.texts).view(len(prompts), n)
    best = select_best(scores)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i, prompt in enumerate(prompts):
            j = i * n + int(best[i])
            row = {"prompt": prompt, "completion": out.texts[j], "reward": float(scores[i, best[i]]),
                   "mean_reward_of_n": float(scores[i].mean()), "n": n, "finished": bool(out.finished[j])}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"prompts": len(prompts), "n": n, "mean_best_reward": float(scores.max(-1).values.mean()),
            "mean_reward": float(scores.mean()), "kl_bound": best_of_n_kl(n), "output": str(path)}
