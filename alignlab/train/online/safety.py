"""HC-RLHF's held-out safety test (Chittepu et al. 2025): after training under a pessimistic cost
bound, sample the policy on held-out prompts and accept it only if the (1 - delta) upper confidence
bound of its expected cost is at most the threshold."""

from __future__ import annotations

import torch

from alignlab.data.tokenize import encode_prompt
from alignlab.losses.control import safety_test
from alignlab.rollout.base import SamplingParams


@torch.no_grad()
def run_safety_test(cfg, maker, eval_rows: list[dict], cost) -> dict:
    rows = eval_rows[: cfg.safety_prompts]
    if len(rows) < 2:
        raise ValueError("the HC-RLHF safety test needs at least 2 held-out prompts (eval_data)")
    prompts = [r["prompt"] for r in rows]
    ids = [encode_prompt(maker.tokenizer, p) for p in prompts]
    params = SamplingParams(n=1, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 99_991)
    out = maker.generator.generate(ids, params)
    costs = cost.score(prompts, out.texts).float()
    result = safety_test(costs, threshold=cfg.cost_threshold, delta=cfg.hc_delta)
    result["verdict"] = "PASS: policy accepted" if result["passed"] else "FAIL: no solution found (policy rejected)"
    return result
