"""Online iterative DPO's rollout (RLHF Workflow, arXiv:2405.07863): sample n responses a prompt
from the current policy, judge them, keep one labelled pair a prompt.

The judge is a preference source (`alignlab.preferences`: a pairwise model, an LLM judge, a
simulated annotator, ...) or, when none is set, the reward sources through Bradley-Terry,
P(a ≻ b) = σ((r(a) − r(b)) / judge_temperature). Every pair of a prompt's responses is judged
once (round robin, one batched call); responses are ranked by their expected win rate in the
group and `pair_rule` picks the pair. Hard labels threshold the pair's probability at 1/2, and
a pair judged exactly 1/2 is a tie: dropped and counted (`pairs/ties_dropped`). With
`soft_labels` the probability itself is the target (OSP).

With XPO / VPO exploration each group is the prompt's one policy sample and one sample of the
reference policy (`from_reference`), judged against each other.

The reference log-probs of the pair: the initial model's (`reference_update: fixed`; the
adapter-disabled policy under LoRA, the frozen copy otherwise) or the policy's at the start of
the iteration, i.e. the policy that sampled (`refresh`). INPO uses both: the fixed reference's,
and the sampling log-probs (`old_logps`) as its previous iterate pi_t. MNPO uses the fixed
reference's and the mean log-probs of its population of past iterates (`population_logps`).
"""

from __future__ import annotations

import time

import torch

from alignlab.losses import LOSSES
from alignlab.losses.online_preference import choose_pairs, round_robin_probabilities
from alignlab.models.load import reference_context
from alignlab.train.online.batch import RolloutBatch, pad_tokens
from alignlab.train.online.judging import row_judge
from alignlab.train.online.rollout import token_pass


def make_preference_batch(maker, iteration: int, prompts: list, prompt_ids: list, ctl) -> RolloutBatch:
    """One online-DPO iteration's RolloutBatch: groups of m rows a prompt (n policy samples, or
    one policy and one reference sample with exploration), `keep` marking each prompt's pair,
    `rewards` holding each kept row's target P(row ≻ the other row)."""
    c = maker.cfg
    explore = c.exploration != "none"
    if c.spec.preference_objective == "mnpo":  # pi_t joins MNPO's population before it samples
        maker.population.snapshot(iteration)
    if c.spec.extragradient and iteration % 2 == 0:  # EGPO: pi_t, where the next (full) step starts from
        maker.population.snapshot(iteration)
    # sampled and scored data-parallel (each process its block of prompts), then gathered
    out, raw_out, parts, gen_seconds, score_seconds = maker._sample_and_score(
        prompts, prompt_ids, maker._params(iteration, c.samples_per_prompt), maker._sampler())
    raw_out = maker._length_penalised(raw_out, out)
    ref_out = raw_ref = None
    if explore:
        with reference_context(maker.model):
            ref_out, raw_ref, _, ref_gen, ref_score = maker._sample_and_score(
                prompts, prompt_ids, maker._params(iteration + 1_000_000, 1), maker.reference_generator)
        raw_ref = maker._length_penalised(raw_ref, ref_out)
        gen_seconds, score_seconds = gen_seconds + ref_gen, score_seconds + ref_score
    n, m = c.samples_per_prompt, c.samples_per_prompt + int(explore)
    order = []  # (source, index) per row, prompt-major groups of m
    for p in range(len(prompts)):
        order += [(out, p * n + i) for i in range(n)] + ([(ref_out, p)] if explore else [])
    completion_ids = [src.completion_ids[i] for src, i in order]
    rows_prompts = [prompts[r // m] for r in range(len(order))]
    batch = RolloutBatch(iteration, m, rows_prompts, [prompt_ids[r // m] for r in range(len(order))], completion_ids,
                         [src.texts[i] for src, i in order], [src.finished[i] for src, i in order],
                         mask=pad_tokens([[1.0] * len(x) for x in completion_ids]),
                         old_logps=pad_tokens([src.logprobs[i] for src, i in order]), rewards=torch.zeros(len(order)))
    batch.from_reference = torch.tensor([src is ref_out for src, _ in order]) if explore else None
    lengths = torch.tensor([len(x) for x in completion_ids])
    t1 = time.perf_counter()
    raw = torch.stack([(raw_out if src is out else raw_ref)[i] for src, i in order])
    metrics = {f"reward/{k}": float(v.mean()) for k, v in parts.items()}
    probabilities = round_robin_probabilities(_judge(maker, batch, raw), m, len(prompts))  # (P, m, m)
    score_seconds += time.perf_counter() - t1  # the judge
    ties, chosen_p = _label(batch, probabilities, choose_pairs(probabilities, c.pair_rule, _pair_generator(c, iteration)),
                  soft=c.soft_labels)
    t2 = time.perf_counter()
    inpo = c.spec.no_regret
    rows, chunk = list(range(len(batch))), max(1, c.batch_size)
    if inpo and c.rollout_dtype != "float32":  # INPO's pi_t: the policy that sampled, at its own precision
        batch.old_logps, _ = token_pass(maker.scorer, batch, rows, maker.pad_token_id, chunk)
    if c.spec.preference_objective == "mnpo":  # the mean log-probs of the last `population` iterates
        batch.population_logps = maker.population.mean_logps(
            iteration, batch.old_logps, lambda: token_pass(maker.scorer, batch, rows, maker.pad_token_id, chunk)[0])
    if inpo or LOSSES[c.preference_loss].needs_reference or c.exploration == "vpo":
        if c.reference_update == "refresh" and not inpo:  # the policy that sampled, before this iteration's updates
            batch.ref_logps, _ = token_pass(maker.scorer, batch, rows, maker.pad_token_id, chunk)
        else:
            with reference_context(maker.model):
                batch.ref_logps, _ = token_pass(maker.reference_scorer, batch, rows, maker.pad_token_id, chunk,
                                                reference=True)
    pass_seconds = time.perf_counter() - t2
    policy_rows = ~batch.from_reference if explore else torch.ones(len(batch), dtype=torch.bool)
    kept = batch.keep.nonzero()[:, 0]
    metrics.update({
        "reward/mean": float(raw[policy_rows].mean()),
        "reward/std": float(raw[policy_rows].std()) if int(policy_rows.sum()) > 1 else 0.0,
        "response_length": float(lengths[policy_rows].float().mean()),
        "truncated_share": 1.0 - sum(f for f, p in zip(batch.finished, policy_rows.tolist()) if p) / int(policy_rows.sum()),
        "pairs": len(kept) // 2, "pairs/ties_dropped": ties,
        "pairs/chosen_probability": sum(chosen_p) / len(chosen_p) if chosen_p else 0.0,
        "kl_coef": ctl.kl_coef, "time/generation": gen_seconds, "time/scoring": score_seconds,
        "time/reference_and_old": pass_seconds,
        **({"extragradient/full_step": float(iteration % 2)} if c.spec.extragradient else {}),
        "generated_tokens_per_second": int(lengths.sum()) / max(gen_seconds, 1e-9), "completions": len(batch),
    })
    if explore:
        metrics["reward/reference_mean"] = float(raw[batch.from_reference].mean())
    if batch.ref_logps is not None and c.reference_update == "fixed":
        seq_kl = ((batch.old_logps - batch.ref_logps) * batch.mask).sum(-1)
        metrics["kl_to_reference"] = float(seq_kl[policy_rows].mean())
    batch.metrics, batch.controller = metrics, ctl.to_dict()
    return batch


def _judge(maker, batch: RolloutBatch, raw: torch.Tensor):
    """prefer(first_rows, second_rows) -> P(first ≻ second), from the judge or the rewards."""
    return row_judge(maker.judge, batch.prompts, batch.texts, raw, maker.cfg.judge_temperature)


def _pair_generator(cfg, iteration: int) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7 * iteration + 1)


def _label(batch: RolloutBatch, probabilities: torch.Tensor, pairs: torch.Tensor, *, soft: bool
           ) -> tuple[int, list[float]]:
    """Set `batch.keep` to each group's chosen pair and `batch.rewards` to each kept row's target
    P(row ≻ other) (hard: 0 or 1); a pair judged exactly 1/2 is dropped. Returns the number of
    ties and each kept pair's judged P(chosen ≻ rejected)."""
    m = batch.n
    keep = torch.zeros(len(batch), dtype=torch.bool)
    targets, judged = torch.zeros(len(batch)), torch.zeros(len(batch))
    ties, chosen_p = 0, []
    for g, (i, j) in enumerate(pairs.tolist()):
        a, b = min(i, j), max(i, j)
        p = float(probabilities[g, a, b])
        if p == 0.5:
            ties += 1
            continue
        target = p if soft else float(p > 0.5)
        keep[g * m + a] = keep[g * m + b] = True
        targets[g * m + a], targets[g * m + b] = target, 1.0 - target
        judged[g * m + a], judged[g * m + b] = p, 1.0 - p
        chosen_p.append(max(p, 1.0 - p))
    batch.keep, batch.rewards, batch.judged = keep, targets, judged
    return ties, chosen_p
