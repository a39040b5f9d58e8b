"""One rollout iteration of online RL: sample, score, shape, add reference and critic passes, and
compute advantages with the shared estimator table. Produces a `RolloutBatch`.

Where the time goes: all prompts x n samples go to `generate` in as few calls as
`rollout_batch_size` allows; the sampling log-probs are reused as the old-policy log-probs (no
extra pass) unless a critic pass runs anyway or a bf16 copy sampled them (`rollout_dtype`); the
reference pass is skipped when kl_coef is 0.

Data parallel: each process samples and scores its block of the prompts (a prompt's whole group
stays on one process; each prompt's samples are seeded by its position in the iteration, so they
are the same on any number of processes), the completions and rewards are gathered, and the
critic and reference passes are split by rows and summed. Shaping, advantages and controllers
then run on the full batch, identically on every process.
"""

from __future__ import annotations

import copy
import importlib.util
import time
from dataclasses import dataclass, field

import torch

from alignlab.losses.advantages import compute_advantages, sequence_kl
from alignlab.losses.control import LAGRANGE_UPDATES, adaptive_kl_coef, cost_upper_bound, lagrangian_advantages
from alignlab.losses.policy import kl_estimate
from alignlab.losses.shaping import length_penalty, par_shaping, policy_filter
from alignlab.models.load import is_peft, reference_context, resolve_model_path
from alignlab.rollout.base import SamplingParams
from alignlab.rollout.hf import HFGenerator
from alignlab.rollout.mixture import Mixture
from alignlab.rollout.vllm import VLLMGenerator
from alignlab.train import distributed as dist
from alignlab.train.online.batch import RolloutBatch, make_micro_batch, pad_tokens
from alignlab.train.online.judging import group_win_rates, opponent_win_rates, row_judge


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
    `reference=True` runs the reference policy (LoRA adapter disabled, or the frozen copy).
    Each process scores its block of `rows`; every process returns them all."""
    B, T = batch.mask.shape
    logps = torch.zeros(B, T)  # rows of other processes stay 0 until the sum
    head = getattr(scorer, "value_head", None)
    values = torch.zeros(B, T, head.out_features) if head is not None and not reference else None
    device = next(scorer.parameters()).device
    mine = [rows[i] for i in dist.shard_indices(len(rows))]
    for start in range(0, len(mine), chunk):
        mb = make_micro_batch(batch, mine[start : start + chunk], pad_token_id)
        out, vals = scorer(mb.packed.to(device))
        logps[mb.rows] = mb.to_bt(out.logps.float().cpu())
        if values is not None:
            values[mb.rows] = mb.to_bt(vals.float().cpu())
    return dist.all_reduce_sum(logps), dist.all_reduce_sum(values) if values is not None else None


def prompt_seeds(params: SamplingParams, num_prompts: int) -> list[int]:
    """The seed of each prompt of a rollout call: from the call's seed and the prompt's position
    alone, so a prompt's samples are the same on any number of processes."""
    return [params.seed * 7_919 + k for k in range(num_prompts)]


class SyncedGenerator:
    """A rollout engine holding its own copy of the policy (vLLM): the trained weights are pushed
    into it before every call, so it always samples the current policy."""

    def __init__(self, engine, model):
        self.engine, self.model = engine, model

    def generate(self, prompt_ids, params, **kw):
        self.engine.sync_weights(self.model)
        return self.engine.generate(prompt_ids, params, **kw)


def resolve_backend(cfg) -> tuple[str, str]:
    """(backend, why) for `cfg.rollout_backend`: hf or vllm as given; auto takes vllm where it can
    run exactly (vLLM importable, a CUDA device, no top_k/top_p truncation, fp32 rollouts) and hf
    otherwise."""
    if cfg.rollout_backend != "auto":
        return cfg.rollout_backend, "as set"
    if importlib.util.find_spec("vllm") is None:
        return "hf", "vLLM is not installed"
    if not torch.cuda.is_available():
        return "hf", "no CUDA device"
    if cfg.top_k or cfg.top_p != 1.0:
        return "hf", "top_k/top_p truncation is set (vLLM's log-probs would be of the truncated distribution)"
    if cfg.rollout_dtype != "float32":
        return "hf", f"rollout_dtype {cfg.rollout_dtype} is the hf backend's bf16 copy"
    return "vllm", "vLLM and a CUDA device are present"


def rollout_generator(cfg, model, tokenizer):
    """The sampler of `cfg.rollout_backend`: HF generate on the policy itself, or a vLLM engine
    (auto: see `resolve_backend`; the choice and its reason are printed once)."""
    backend, why = resolve_backend(cfg)
    if cfg.rollout_backend == "auto" and dist.is_main():
        print(f"alignlab: rollout_backend auto -> {backend} ({why})", flush=True)
    if backend == "hf":
        return HFGenerator(model, tokenizer, batch_size=cfg.rollout_batch_size)
    if importlib.util.find_spec("vllm") is None:
        raise ValueError("rollout_backend vllm needs vLLM (pip install vllm, on a GPU machine); or use rollout_backend hf")
    return SyncedGenerator(VLLMGenerator(resolve_model_path(cfg.model), tokenizer, seed=cfg.seed), model)


@torch.no_grad()
def rollout_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """An eval-mode copy of the policy's current weights in `dtype`, for sampling only; a PEFT
    model's adapters are merged into the copy (the policy itself is untouched)."""
    # each parameter is cast on the way (the memo hands deepcopy the cast tensor; tied weights stay
    # tied), so no second full-precision copy is ever held
    memo = {id(p): torch.nn.Parameter(p.detach().to(dtype), requires_grad=p.requires_grad) for p in model.parameters()}
    clone = copy.deepcopy(model, memo)
    if is_peft(clone):
        clone = clone.merge_and_unload()
    # requires_grad stays on (sampling runs under no_grad anyway): on CPU, bf16 linears over
    # weights with requires_grad off took 4x longer and ~3.5 GB more (torch 2.13, measured)
    return clone.to(dtype).eval()


class RolloutMaker:
    """Builds each iteration's RolloutBatch for one trainer (owns no optimizer state)."""

    def __init__(self, cfg, *, model, scorer, reference_scorer, tokenizer, rewards, cost, pad_token_id: int,
                 judge=None):
        self.cfg, self.model, self.scorer, self.reference_scorer = cfg, model, scorer, reference_scorer
        self.judge = judge  # online DPO's preference source (None: the rewards through Bradley-Terry)
        self.population = None  # past iterates (MNPO, Nash-MP's anchor, EGPO's pi_t), set by the trainer
        self.tokenizer, self.rewards, self.cost, self.pad_token_id = tokenizer, rewards, cost, pad_token_id
        self.generator = rollout_generator(cfg, model, tokenizer)
        # PAR and XPO/VPO sample the reference policy: the same model with its adapter disabled under LoRA,
        # the frozen copy under full fine-tuning (where disabling an adapter would change nothing)
        self.reference_generator = None
        if cfg.par_references or cfg.exploration != "none":
            reference_model = model if is_peft(model) else reference_scorer.model
            self.reference_generator = HFGenerator(reference_model, tokenizer, batch_size=cfg.rollout_batch_size)
        # Nash-MD's opponents: the policy's own generate (full precision, whatever the rollout backend),
        # mixed token by token with the reference (adapter disabled under LoRA, the frozen copy otherwise)
        self.opponent_generator = None
        if cfg.spec.mixture_opponent:
            reference_model = model if is_peft(model) else reference_scorer.model
            mixture = Mixture(reference_model, cfg.mixture_coef, context=lambda: reference_context(model))
            self.opponent_generator = HFGenerator(model, tokenizer, batch_size=cfg.rollout_batch_size, mixture=mixture)

    def _sampler(self):
        """The generator of this iteration's samples: the policy itself, or under rollout_dtype
        bfloat16 a bf16 copy of its current weights (LoRA merged in), made now and dropped after
        sampling, so it never adds to the peak memory of the update that follows."""
        if self.cfg.rollout_dtype == "float32":
            return self.generator
        return HFGenerator(rollout_copy(self.model, getattr(torch, self.cfg.rollout_dtype)), self.tokenizer,
                           batch_size=self.cfg.rollout_batch_size)

    def _params(self, iteration: int, n: int, **kw) -> SamplingParams:
        c = self.cfg
        return SamplingParams(n=n, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
                              max_new_tokens=c.max_new_tokens, stop_strings=tuple(c.stop_strings) or None,
                              seed=c.seed * 100_003 + iteration, **kw)

    def _length_penalised(self, raw: torch.Tensor, out) -> torch.Tensor:
        """Raw rewards (B,) of `out`'s completions with the length penalty, when it is on."""
        if not self.cfg.length_penalty:
            return raw
        lengths = torch.tensor([len(x) for x in out.completion_ids])
        return length_penalty(raw, lengths, self.cfg.length_penalty, self.cfg.length_target or None)

    def _sample_and_score(self, prompts: list, prompt_ids: list, params: SamplingParams, generator=None):
        """(completions, raw rewards (B,) before the length penalty, reward parts {name: (B,)},
        seconds generating, seconds scoring): this process's prompts sampled (by `generator`, the
        policy's by default), each seeded by its index in the call, and scored; then everything
        gathered from all processes."""
        generator = generator or self.generator
        mine = dist.shard_indices(len(prompt_ids))
        seeds = prompt_seeds(params, len(prompt_ids))
        local = raw = parts = None
        t0 = time.perf_counter()
        if mine:
            local = generator.generate([prompt_ids[i] for i in mine], params, seeds=[seeds[i] for i in mine])
        t1 = time.perf_counter()
        if mine:
            raw = self.rewards.score([prompts[mine[i]] for i in local.prompt_index], local.texts)
            parts = dict(self.rewards.last_parts)
        t2 = time.perf_counter()
        out = dist.gather_completions(local, mine, prompt_ids, self.tokenizer)
        return out, dist.gather_rows(raw), dist.gather_rows(parts) or {}, t1 - t0, t2 - t1

    def make(self, iteration: int, prompts: list, prompt_ids: list, ctl: Controllers) -> RolloutBatch:
        c, spec = self.cfg, self.cfg.spec
        n = c.samples_per_prompt
        out, raw, parts, gen_seconds, score_seconds = self._sample_and_score(prompts, prompt_ids, self._params(iteration, n),
                                                                             self._sampler())
        rows_prompts = [prompts[i] for i in out.prompt_index]
        lengths = torch.tensor([len(x) for x in out.completion_ids])
        batch = RolloutBatch(iteration, n, rows_prompts, out.prompt_ids, out.completion_ids, out.texts, out.finished,
                             mask=pad_tokens([[1.0] * len(x) for x in out.completion_ids]),
                             old_logps=pad_tokens(out.logprobs), rewards=torch.zeros(len(out)))
        metrics = {f"reward/{k}": float(v.mean()) for k, v in parts.items()}
        raw = self._length_penalised(raw, out)
        if spec.self_play:  # SPO: each sample's reward is its win rate in its prompt's group under the judge
            metrics["reward/source_mean"] = float(raw.mean())
            t_judge = time.perf_counter()
            raw, _ = group_win_rates(row_judge(self.judge, rows_prompts, out.texts, raw, c.judge_temperature), n,
                                     len(prompts))
            score_seconds += time.perf_counter() - t_judge
        if spec.mixture_opponent:
            raw, opponent_seconds = self._opponent_rewards(iteration, prompts, prompt_ids, rows_prompts, out, raw,
                                                           metrics)
            score_seconds += opponent_seconds
        greedy_raw = self._greedy_rewards(iteration, prompts, prompt_ids, metrics) if spec.greedy_baseline else None
        rewards, greedy = self._shape(raw, iteration, prompts, prompt_ids, ctl, metrics, greedy_raw)
        batch.baseline = greedy
        t2 = time.perf_counter()
        rows = list(range(len(batch)))
        chunk = max(1, c.batch_size)
        # one no-grad policy pass gives the old values, and the old log-probs at the policy's own
        # precision: a bf16 copy's sampling log-probs must never enter the importance ratio
        if spec.critics or c.rollout_dtype != "float32":
            sampled_logps = batch.old_logps
            batch.old_logps, batch.old_values = token_pass(self.scorer, batch, rows, self.pad_token_id, chunk)
            metrics["sampler_logprob_gap"] = float(((sampled_logps - batch.old_logps).abs() * batch.mask).sum()
                                                   / batch.mask.sum().clamp(min=1))
        if c.kl_coef > 0:
            with reference_context(self.model):
                batch.ref_logps, _ = token_pass(self.reference_scorer, batch, rows, self.pad_token_id, chunk,
                                                reference=True)
        if spec.mirror_prox:
            batch.anchor_logps = self._anchor_logps(iteration, batch, rows, chunk, metrics)
        pass_seconds = time.perf_counter() - t2
        kl = kl_estimate(batch.old_logps, batch.ref_logps, c.kl_estimator) if batch.ref_logps is not None else None
        seq_kl = sequence_kl(kl_estimate(batch.old_logps, batch.ref_logps, "k1"), batch.mask) if kl is not None else None
        self._advantages(batch, rewards, kl, greedy, ctl)
        if spec.needs_cost:
            self._update_lagrange(batch, ctl, metrics)
        if c.kl_target and seq_kl is not None:
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
        if spec.group_baseline:  # groups whose samples all scored alike teach nothing
            g = rewards.reshape(-1, n)
            metrics["zero_advantage_groups"] = float((g.max(-1).values == g.min(-1).values).float().mean())
        batch.metrics, batch.controller = metrics, ctl.to_dict()
        return batch

    def _anchor_logps(self, iteration: int, batch: RolloutBatch, rows, chunk: int, metrics: dict) -> torch.Tensor:
        """Nash-MP: (B, T) log-probs of the proximal anchor pi_k. Even iterations are half steps
        from the policy that sampled them (pi_k itself: kept as the anchor); odd ones are full
        steps from the same pi_k, the weights kept at the previous iteration's start."""
        anchor = iteration - iteration % 2
        metrics["mirror_prox/half_step"] = float(anchor == iteration)
        if anchor == iteration:
            self.population.snapshot(iteration)
            return batch.old_logps.clone()
        with self.population.acting_as(anchor):
            return token_pass(self.scorer, batch, rows, self.pad_token_id, chunk)[0]

    def _opponent_rewards(self, iteration, prompts, prompt_ids, rows_prompts, out, raw, metrics
                          ) -> tuple[torch.Tensor, float]:
        """Nash-MD: each sample's reward P(y_i ≻ y'_i) against its own opponent y'_i, drawn (n a
        prompt, seeded apart from the samples) from the geometric mixture pi^(1-m) pi_ref^m of the
        current policy; and the seconds it took to sample, score and judge them."""
        c = self.cfg
        t0 = time.perf_counter()
        metrics["reward/source_mean"] = float(raw.mean())
        opp, opp_raw, _, _, _ = self._sample_and_score(prompts, prompt_ids,
                                                       self._params(iteration + 2_000_000, c.samples_per_prompt),
                                                       self.opponent_generator)
        opp_raw = self._length_penalised(opp_raw, opp)
        wins = opponent_win_rates(self.judge, rows_prompts, out.texts, opp.texts, raw, opp_raw, c.judge_temperature)
        metrics.update({"reward/opponent_source_mean": float(opp_raw.mean()),
                        "opponent_length": sum(map(len, opp.completion_ids)) / len(opp)})
        return wins, time.perf_counter() - t0

    def _shape(self, raw, iteration, prompts, prompt_ids, ctl: Controllers, metrics, greedy_raw=None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The samples' rewards (B,) after PAR, running normalization and clipping, and ReMax's
        greedy baseline (P,) through exactly the same transform (the same reference rewards, the
        same moments, which only the samples update: the baseline is not a draw from the policy)."""
        c = self.cfg
        rewards, baseline = raw, greedy_raw
        if c.par_references:  # PAR: sigmoid of the margin over the reference policy's own samples
            per_prompt = self._reference_rewards(iteration, prompts, prompt_ids, metrics)  # (P, M)
            rewards = par_shaping(raw, per_prompt.repeat_interleave(c.samples_per_prompt, dim=0))
            baseline = par_shaping(baseline, per_prompt) if baseline is not None else None
        if c.reward_normalize:
            ctl.reward_moments.update(rewards)
            mean, std = ctl.reward_moments.mean, max(ctl.reward_moments.std, 1e-6)
            rewards = (rewards - mean) / std
            baseline = (baseline - mean) / std if baseline is not None else None
        if c.reward_clip:
            rewards = rewards.clamp(-c.reward_clip, c.reward_clip)
            baseline = baseline.clamp(-c.reward_clip, c.reward_clip) if baseline is not None else None
        return rewards, baseline

    def _reference_rewards(self, iteration, prompts, prompt_ids, metrics) -> torch.Tensor:
        """(P, M) raw rewards of M samples per prompt from the reference policy (PAR): the
        adapter-disabled policy with LoRA, the frozen copy under full fine-tuning."""
        c = self.cfg
        with reference_context(self.model):
            ref, raw, _, _, _ = self._sample_and_score(prompts, prompt_ids,
                                                       self._params(iteration + 1_000_000, c.par_references),
                                                       self.reference_generator)
        ref_raw = self._length_penalised(raw, ref)
        metrics["reward/reference_mean"] = float(ref_raw.mean())
        return ref_raw.reshape(len(prompts), c.par_references)

    def _greedy_rewards(self, iteration, prompts, prompt_ids, metrics) -> torch.Tensor:
        """ReMax's baseline before shaping: the raw reward (length penalty included) of each prompt's
        greedy completion, (P,)."""
        out, raw, _, _, _ = self._sample_and_score(prompts, prompt_ids, self._params(iteration, 1, greedy=True))
        raw = self._length_penalised(raw, out)
        metrics["reward/greedy_mean"] = float(raw.mean())
        return raw

    def _advantages(self, batch: RolloutBatch, rewards, kl, greedy, ctl: Controllers) -> None:
        c, spec = self.cfg, self.cfg.spec
        n = c.samples_per_prompt
        kl_coef = ctl.kl_coef if c.kl_mode == "reward" else 0.0
        keep = policy_filter(rewards, n, c.policy_filter) if c.policy_filter != "none" else None
        batch.keep, batch.rewards = keep, rewards
        if spec.supervised:  # RAFT / SuperHF: the kept samples are fine-tuned on; no advantages
            return
        if spec.estimator is None:  # P3O: the pairwise loss uses KL-shaped sequence rewards directly
            if kl is not None and kl_coef:
                batch.rewards = rewards - kl_coef * sequence_kl(kl, batch.mask)
            return
        if spec.needs_cost:
            batch.costs = self.cost.score(batch.prompts, batch.texts).float()
        # PF-PPO (Shen et al. 2024): advantages (group statistics, whitening) from the kept samples
        # only; filtered rows get none and are never trained on
        rows = keep.nonzero()[:, 0] if keep is not None else torch.arange(len(batch))
        adv, ret = self._estimate(batch, rows, len(rows) * n // len(batch), rewards, kl, kl_coef, greedy, ctl)
        batch.advantages = torch.zeros(batch.mask.shape, dtype=adv.dtype)
        batch.advantages[rows] = adv
        if ret is not None:
            batch.returns = torch.zeros(*batch.mask.shape, ret.shape[-1], dtype=ret.dtype)
            batch.returns[rows] = ret
        if c.mask_truncated:  # DAPO's overlong filtering: a cut-off completion's reward says little, so its
            # tokens leave the loss (and its normalizer); its reward still counted in its group's baseline
            batch.mask = batch.mask * torch.tensor(batch.finished, dtype=batch.mask.dtype)[:, None]

    def _estimate(self, batch: RolloutBatch, rows, n: int, rewards, kl, kl_coef: float, greedy, ctl: Controllers):
        """Advantages (k, T) and value targets (k, T, C) or None of the k = len(rows) rows, which form
        whole prompt groups of n each (prompt-major)."""
        c, spec = self.cfg, self.cfg.spec
        mask = batch.mask[rows]
        sub_kl = kl[rows] if kl is not None else None
        values = batch.old_values[rows] if batch.old_values is not None else None  # (k, T, C)
        adv, ret = compute_advantages(spec.estimator, rewards[rows], mask, n=n, kl=sub_kl, kl_coef=kl_coef,
                                      values=values[..., 0] if values is not None else None, greedy_rewards=greedy,
                                      gamma=c.gamma, lam=c.lam, scale=c.scale_rewards,
                                      whiten_advantages=c.whiten_advantages)
        if not spec.needs_cost:
            return adv, (ret[..., None] if ret is not None else None)
        # +beta * kl_t in the cost token rewards (kl_coef negated), as Safe RLHF's code: the combined
        # advantage then keeps -beta * kl for every lambda (lagrangian_advantages)
        cost_adv, cost_ret = compute_advantages("gae", batch.costs[rows], mask, n=n, kl=sub_kl, kl_coef=-kl_coef,
                                                values=values[..., 1], gamma=c.gamma, lam=c.lam,
                                                whiten_advantages=c.whiten_advantages)
        return lagrangian_advantages(adv, cost_adv, ctl.lagrange), torch.stack([ret, cost_ret], -1)

    def _update_lagrange(self, batch: RolloutBatch, ctl: Controllers, metrics: dict) -> None:
        """Safe RLHF: lambda follows the batch's mean cost; HC-RLHF: its pessimistic upper bound.
        `lagrange_update` picks the additive (projected) or the log-space ascent."""
        c = self.cfg
        cost = float(batch.costs.mean())
        if c.hc_delta:
            cost = cost_upper_bound(batch.costs, delta=c.hc_delta, inflation=c.hc_inflation).upper
            metrics["cost/upper_bound"] = cost
        metrics.update({"cost/mean": float(batch.costs.mean()), "lagrange_multiplier": ctl.lagrange})
        ctl.lagrange = LAGRANGE_UPDATES[c.lagrange_update](ctl.lagrange, cost, threshold=c.cost_threshold,
                                                           lr=c.lagrange_lr)
