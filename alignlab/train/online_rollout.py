"""One rollout iteration of online RL: sample, score, shape, add reference and critic passes, and
compute advantages with the shared estimator table. Produces a `RolloutBatch`.

Where the time goes (PERF_NOTES 3, 5): all prompts x n samples go to `generate` in as few calls as
`rollout_batch_size` allows; the sampling log-probs are reused as the old-policy log-probs (no
extra pass) unless a critic pass runs anyway; the reference pass is skipped when kl_coef is 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from alignlab.losses.advantages import compute_advantages, sequence_kl
from alignlab.losses.control import cost_upper_bound, lagrangian_advantages
from alignlab.losses.policy import kl_estimate
from alignlab.losses.shaping import length_penalty, par_shaping, policy_filter
from alignlab.models.load import reference_context
from alignlab.rollout.base import SamplingParams
from alignlab.rollout.hf import HFGenerator
from alignlab.train.online_batch import RolloutBatch, make_micro_batch, pad_tokens


@dataclass
class RunningMoments:
    """Running mean/std of rewards over all iterations (PPO-max reward normalization)."""

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, x: torch.Tensor) -> None:
        n, mean, var = x.numel(), float(x.mean()), float(x.var(unbiased=False)) if x.numel() > 1 else 0.0
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += var * n + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return (self.m2 / self.count) ** 0.5 if self.count > 1 else 1.0


@dataclass
class Controllers:
    """State that evolves across iterations; saved with each rollout for exact resume."""

    kl_coef: float
    lagrange: float = 0.0
    reward_moments: RunningMoments = field(default_factory=RunningMoments)

    def to_dict(self) -> dict:
        return {"kl_coef": self.kl_coef, "lagrange": self.lagrange, "reward_moments": vars(self.reward_moments).copy()}

    @classmethod
    def from_dict(cls, d: dict) -> "Controllers":
        return cls(d["kl_coef"], d["lagrange"], RunningMoments(**d["reward_moments"]))


@torch.no_grad()
def token_pass(scorer, batch: RolloutBatch, rows: list[int], pad_token_id: int, chunk: int, *, reference: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) log-probs and (B, T, C) values of the sampled tokens, no grad, in chunks of rows.
    `reference=True` runs the reference policy (LoRA adapter disabled, or the frozen copy)."""
    B, T = batch.mask.shape
    logps = torch.zeros(B, T)
    values = None
    device = next(scorer.parameters()).device
    for start in range(0, len(rows), chunk):
        mb = make_micro_batch(batch, rows[start : start + chunk], pad_token_id)
        out, vals = scorer(mb.packed.to(device))
        logps[mb.rows] = mb.to_bt(out.logps.float().cpu())
        if vals is not None and not reference:
            values = torch.zeros(B, T, vals.shape[-1]) if values is None else values
            values[mb.rows] = mb.to_bt(vals.float().cpu())
    return logps, values


class RolloutMaker:
    """Builds each iteration's RolloutBatch for one trainer (owns no optimizer state)."""

    def __init__(self, cfg, *, model, scorer, reference_scorer, tokenizer, rewards, cost, pad_token_id: int):
        self.cfg, self.model, self.scorer, self.reference_scorer = cfg, model, scorer, reference_scorer
        self.tokenizer, self.rewards, self.cost, self.pad_token_id = tokenizer, rewards, cost, pad_token_id
        self.generator = HFGenerator(model, tokenizer, batch_size=cfg.rollout_batch_size)

    def _params(self, iteration: int, n: int, **kw) -> SamplingParams:
        c = self.cfg
        return SamplingParams(n=n, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
                              max_new_tokens=c.max_new_tokens, stop_strings=tuple(c.stop_strings) or None,
                              seed=c.seed * 100_003 + iteration, **kw)

    def _score(self, prompts, texts, lengths) -> tuple[torch.Tensor, dict]:
        raw = self.rewards.score(prompts, texts)
        parts = {f"reward/{k}": float(v.mean()) for k, v in self.rewards.last_parts.items()}
        if self.cfg.length_penalty:
            raw = length_penalty(raw, lengths, self.cfg.length_penalty, self.cfg.length_target or None)
        return raw, parts

    def make(self, iteration: int, prompts: list, prompt_ids: list, ctl: Controllers) -> RolloutBatch:
        c, spec = self.cfg, self.cfg.spec
        n = c.samples_per_prompt
        t0 = time.perf_counter()
        out = self.generator.generate(prompt_ids, self._params(iteration, n))
        gen_seconds = time.perf_counter() - t0
        rows_prompts = [prompts[i] for i in out.prompt_index]
        lengths = torch.tensor([len(x) for x in out.completion_ids])
        batch = RolloutBatch(iteration, n, rows_prompts, out.prompt_ids, out.completion_ids, out.texts, out.finished,
                             mask=pad_tokens([[1.0] * len(x) for x in out.completion_ids]),
                             old_logps=pad_tokens(out.logprobs), rewards=torch.zeros(len(out)))
        t1 = time.perf_counter()
        raw, metrics = self._score(rows_prompts, out.texts, lengths)
        score_seconds = time.perf_counter() - t1
        rewards = self._shape(raw, iteration, prompts, prompt_ids, ctl, metrics)
        t2 = time.perf_counter()
        rows = list(range(len(batch)))
        chunk = max(1, c.batch_size)
        if spec.critics:  # one no-grad policy pass gives the old values (and exact old log-probs)
            batch.old_logps, batch.old_values = token_pass(self.scorer, batch, rows, self.pad_token_id, chunk)
        if c.kl_coef > 0:
            with reference_context(self.model):
                batch.ref_logps, _ = token_pass(self.reference_scorer, batch, rows, self.pad_token_id, chunk,
                                                reference=True)
        pass_seconds = time.perf_counter() - t2
        kl = kl_estimate(batch.old_logps, batch.ref_logps, c.kl_estimator) if batch.ref_logps is not None else None
        seq_kl = sequence_kl(kl_estimate(batch.old_logps, batch.ref_logps, "k1"), batch.mask) if kl is not None else None
        greedy = self._greedy_rewards(iteration, prompts, prompt_ids) if spec.estimator == "remax" else None
        self._advantages(batch, rewards, kl, greedy, ctl)
        if spec.needs_cost:
            self._update_lagrange(batch, ctl, metrics)
        if c.kl_target and seq_kl is not None:
            from alignlab.losses.control import adaptive_kl_coef

            ctl.kl_coef = adaptive_kl_coef(ctl.kl_coef, float(seq_kl.mean()), target=c.kl_target, horizon=c.kl_horizon,
                                           n_steps=len(batch))
        gen_tokens = int(lengths.sum())
        metrics.update({
            "reward/mean": float(raw.mean()), "reward/std": float(raw.std()) if len(raw) > 1 else 0.0,
            "reward/shaped_mean": float(rewards.mean()),
            "kl_to_reference": float(seq_kl.mean()) if seq_kl is not None else 0.0,
            "response_length": float(lengths.float().mean()),
            "truncated_share": 1.0 - sum(out.finished) / len(out),
            "kl_coef": ctl.kl_coef, "time/generation": gen_seconds, "time/scoring": score_seconds,
            "time/reference_and_old": pass_seconds, "generated_tokens_per_second": gen_tokens / max(gen_seconds, 1e-9),
            "completions": len(out),
        })
        if spec.estimator == "grpo":
            g = rewards.reshape(-1, n)
            metrics["zero_advantage_groups"] = float((g.max(-1).values == g.min(-1).values).float().mean())
        batch.metrics, batch.controller = metrics, ctl.to_dict()
        return batch

    def _shape(self, raw, iteration, prompts, prompt_ids, ctl: Controllers, metrics) -> torch.Tensor:
        c = self.cfg
        rewards = raw
        if c.par_references:  # PAR: sigmoid of the margin over the reference policy's own samples
            with reference_context(self.model):
                ref = self.generator.generate(prompt_ids, self._params(iteration + 1_000_000, c.par_references))
            ref_prompts = [prompts[i] for i in ref.prompt_index]
            ref_raw, _ = self._score(ref_prompts, ref.texts, torch.tensor([len(x) for x in ref.completion_ids]))
            per_prompt = ref_raw.reshape(len(prompts), c.par_references)
            rewards = par_shaping(raw, per_prompt.repeat_interleave(c.samples_per_prompt, dim=0))
            metrics["reward/reference_mean"] = float(ref_raw.mean())
        if c.reward_normalize:
            ctl.reward_moments.update(rewards)
            rewards = (rewards - ctl.reward_moments.mean) / max(ctl.reward_moments.std, 1e-6)
        if c.reward_clip:
            rewards = rewards.clamp(-c.reward_clip, c.reward_clip)
        return rewards

    def _greedy_rewards(self, iteration, prompts, prompt_ids) -> torch.Tensor:
        out = self.generator.generate(prompt_ids, self._params(iteration, 1, greedy=True))
        raw, _ = self._score(prompts, out.texts, torch.tensor([len(x) for x in out.completion_ids]))
        return raw

    def _advantages(self, batch: RolloutBatch, rewards, kl, greedy, ctl: Controllers) -> None:
        c, spec = self.cfg, self.cfg.spec
        n = c.samples_per_prompt
        kl_coef = ctl.kl_coef if c.kl_mode == "reward" else 0.0
        keep = policy_filter(rewards, n, c.policy_filter) if c.policy_filter != "none" else None
        batch.keep = keep
        if spec.estimator is None:  # P3O: the pairwise loss uses KL-shaped sequence rewards directly
            batch.rewards = rewards - kl_coef * sequence_kl(kl, batch.mask) if kl is not None and kl_coef else rewards
            return
        batch.rewards = rewards
        values = batch.old_values[..., 0] if batch.old_values is not None else None
        adv, ret = compute_advantages(spec.estimator, rewards, batch.mask, n=n, kl=kl, kl_coef=kl_coef, values=values,
                                      greedy_rewards=greedy, gamma=c.gamma, lam=c.lam, scale=c.scale_rewards,
                                      whiten_advantages=c.whiten_advantages)
        if spec.needs_cost:
            batch.costs = self.cost.score(batch.prompts, batch.texts).float()
            cost_adv, cost_ret = compute_advantages("gae", batch.costs, batch.mask, n=n, values=batch.old_values[..., 1],
                                                    gamma=c.gamma, lam=c.lam, whiten_advantages=c.whiten_advantages)
            adv = lagrangian_advantages(adv, cost_adv, ctl.lagrange)
            ret = torch.stack([ret, cost_ret], -1)
        elif ret is not None:
            ret = ret[..., None]
        batch.advantages, batch.returns = adv, ret
        if c.mask_truncated:  # DAPO's overlong filtering: a cut-off completion's reward says little, so its
            # tokens leave the loss (and its normalizer); its reward still counted in its group's baseline
            batch.mask = batch.mask * torch.tensor(batch.finished, dtype=batch.mask.dtype)[:, None]

    def _update_lagrange(self, batch: RolloutBatch, ctl: Controllers, metrics: dict) -> None:
        """Safe RLHF: lambda follows the batch's mean cost; HC-RLHF: its pessimistic upper bound."""
        from alignlab.losses.control import lagrange_update

        c = self.cfg
        cost = float(batch.costs.mean())
        if c.hc_delta:
            cost = cost_upper_bound(batch.costs, delta=c.hc_delta, inflation=c.hc_inflation).upper
            metrics["cost/upper_bound"] = cost
        metrics.update({"cost/mean": float(batch.costs.mean()), "lagrange_multiplier": ctl.lagrange})
        ctl.lagrange = lagrange_update(ctl.lagrange, cost, threshold=c.cost_threshold, lr=c.lagrange_lr)
