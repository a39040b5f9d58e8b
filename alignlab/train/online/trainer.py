"""The online trainer: PPO, GRPO, RLOO, REINFORCE++, ReMax, P3O, PPO-Lagrangian on the one loop.

The loop's "epoch" is one rollout iteration: `micro_batches(i)` samples prompts x n completions
with the current policy, scores them with the reward sources, computes advantages
(rollout.RolloutMaker) and returns `ppo_epochs` shuffled passes of micro-batches over
them; the loop then takes one optimizer step per `grad_accum` micro-batches. Each iteration's
rollout is saved in the run folder before its first update, so a resumed run trains on exactly
the samples it had drawn (and the controllers' state comes back with them).

Exact loss normalization across accumulated micro-batches: `examples_in` counts the reduction's
unit (response tokens for token_mean, sequences for seq_mean_token_mean, sequences x
max_new_tokens for Dr. GRPO's constant), and `loss` returns per-sequence sums in that unit.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

from alignlab.config import ConfigError, fill_defaults, load_yaml, resolve
from alignlab.data.prompts import read_prompt_rows
from alignlab.data.tokenize import encode_prompt
from alignlab.lab.tasks import get_task  # importing the lab also registers its lab:<task> rewards
from alignlab.losses import LOSSES
from alignlab.losses.nash import inpo_pair_losses
from alignlab.losses.online_preference import soft_preference_loss, vpo_bonus, xpo_bonus
from alignlab.losses.policy import clipped_surrogate, clipped_value_loss, kl_estimate, p3o_loss
from alignlab.models.load import is_peft, load_tokenizer, reference_context, save_final, trainable_policy
from alignlab.models.policy_value import PolicyValue
from alignlab.preferences import build_preference_source
from alignlab.rewards.spec import WeightedRewards, build_reward_source, build_rewards
from alignlab.rewards.verifiable import answers_of
from alignlab.rollout.base import SamplingParams
from alignlab.train import distributed as dist
from alignlab.train.dryrun import describe, launched_processes, policy_lines
from alignlab.train.loop import sharded_model
from alignlab.train.online.batch import (OnlineMicroBatch, RolloutBatch, make_micro_batch, micro_batch_rows, pad_tokens,
                                        rollout_files, rollout_path, write_judged_pairs, write_selections)
from alignlab.train.online.config import OnlineConfig
from alignlab.train.online.preference import make_preference_batch
from alignlab.train.online.population import Population
from alignlab.train.online.ptx import PtxMixer, ptx_nll
from alignlab.train.online.rollout import Controllers, RolloutMaker, token_pass
from alignlab.train.online.safety import run_safety_test
from alignlab.train.session import TrainingSession, close_session, open_session, run_training, start_training


def resolve_online(method: str, yaml_path: str | None = None, flags: dict | None = None) -> OnlineConfig:
    """Layering: dataclass defaults <- the method's paper defaults <- preset <- YAML <- flags
    (`alignlab.config.resolve` with `OnlineConfig.context_defaults`)."""
    data = load_yaml(yaml_path) if yaml_path else {}
    for source in (data, flags or {}):
        if source.get("method", method) != method:
            raise ConfigError(f"method is set by the command (`alignlab train {method}`), not by a setting "
                              f"({source['method']!r})")
    return resolve(OnlineConfig, yaml_path, {**(flags or {}), "method": method})


def load_prompt_split(source: str, split: str, n: int, seed: int) -> list[dict]:
    """Prompt rows ({prompt, answer?}) from a lab task (`lab:<task>`) or a file."""
    if source.startswith("lab:"):
        rows = get_task(source[4:], seed=seed).prompt_rows(split)
        return rows[:n] if n else rows

    rows = read_prompt_rows(source)
    return rows[:n] if n else rows


class OnlineAlgorithm:
    progress_keys = ("reward/mean", "kl_to_reference")

    def __init__(self, cfg: OnlineConfig, *, scorer: PolicyValue, maker: RolloutMaker, tokenizer, train_rows, eval_rows,
                 eval_rewards, run_dir: Path, pad_token_id: int, controllers: Controllers, ptx=None):
        self.cfg, self.scorer, self.maker, self.tokenizer = cfg, scorer, maker, tokenizer
        self.ptx = ptx  # online_ptx.PtxMixer when the pretraining/SFT mixing term is on
        self.train_rows, self.eval_rows, self.eval_rewards = train_rows, eval_rows, eval_rewards
        self.rollout_dir = run_dir / "rollouts"
        self.rollout_dir.mkdir(parents=True, exist_ok=True)
        self.pad_token_id, self.ctl = pad_token_id, controllers
        self._cache: tuple[int, RolloutBatch, list[OnlineMicroBatch]] | None = None
        self._prompt_ids: dict[int, list[int]] = {}

    # -- rollouts -------------------------------------------------------------------------------
    def _iteration_prompts(self, iteration: int) -> list[int]:
        """prompts_per_step indices into train_rows, a fresh shuffle on every pass over them."""
        P, N = self.cfg.prompts_per_step, len(self.train_rows)
        out = []
        for k in range(iteration * P, (iteration + 1) * P):
            perm = torch.randperm(N, generator=torch.Generator().manual_seed(self.cfg.seed * 7_919 + k // N)).tolist()
            out.append(perm[k % N])
        return out

    def _ids(self, i: int) -> list[int]:
        if i not in self._prompt_ids:
            self._prompt_ids[i] = encode_prompt(self.tokenizer, self.train_rows[i]["prompt"])
        return self._prompt_ids[i]

    def _path(self, iteration: int) -> Path:
        return rollout_path(self.rollout_dir, iteration)

    def rollout(self, iteration: int) -> RolloutBatch:
        path = self._path(iteration)
        # the main process's view decides: all processes load, or all take part in sampling
        if dist.broadcast_json(path.is_file()):  # resume: the very samples drawn before the interruption
            batch = RolloutBatch.load(path)
        else:
            if iteration > 0 and self._path(iteration - 1).is_file() and (self._cache is None or self._cache[0] != iteration - 1):
                self.ctl = Controllers.from_dict(RolloutBatch.load(self._path(iteration - 1)).controller)
            idx = self._iteration_prompts(iteration)
            make = make_preference_batch if self.cfg.spec.preference else type(self.maker).make
            batch = make(self.maker, iteration, [self.train_rows[i]["prompt"] for i in idx], [self._ids(i) for i in idx],
                         self.ctl)
            if dist.is_main():
                if self.cfg.spec.preference:  # online DPO: each iteration's judged pairs as a dataset, written
                    # before the rollout like RAFT's selections
                    write_judged_pairs(batch, self.rollout_dir.parent / "pairs" / f"iter-{iteration:05d}.jsonl")
                if self.cfg.spec.supervised:  # RAFT / SuperHF: each iteration's selections as a dataset, written
                    # before the rollout, so that a resumed run (which reloads the rollout) always has them
                    write_selections(batch, self.rollout_dir.parent / "selections" / f"iter-{iteration:05d}.jsonl")
                batch.save(path)
        self.ctl = Controllers.from_dict(batch.controller)
        return batch

    def micro_batches(self, epoch: int) -> list[OnlineMicroBatch]:
        if self._cache is None or self._cache[0] != epoch:
            batch = self.rollout(epoch)
            rows = micro_batch_rows(batch, batch_size=self.cfg.batch_size, epochs=self.cfg.ppo_epochs,
                                    seed=self.cfg.seed * 31 + epoch, pairs=self.cfg.spec.pairs)
            first_pass = len(rows) // self.cfg.ppo_epochs
            mbs = [make_micro_batch(batch, r, self.pad_token_id, entropy=self.cfg.log_entropy and i < first_pass)
                   for i, r in enumerate(rows)]
            if self.ptx is not None:
                for i, mb in enumerate(mbs):
                    mb.ptx = self.ptx.batch(epoch, i)
            self._cache = (epoch, batch, mbs)
        return self._cache[2]

    def planned_micro_batches(self) -> int:
        """Micro-batches of an iteration without ties: online DPO's pairs vary (tied pairs are
        dropped), and the run's step count must not depend on the first iteration's ties."""
        if not self.cfg.spec.preference:
            return len(self.micro_batches(0))
        c = self.cfg
        step = c.batch_size + c.batch_size % 2
        return c.ppo_epochs * -(-2 * c.prompts_per_step // step)

    def before_optimizer_step(self, state) -> None:
        """EGPO's full step (odd iterations): the gradient was taken at pi_{t+1/2}, the weights
        that sampled this iteration's pairs; the step applies it from pi_t, the weights at the
        previous iteration's start (Korpelevich's extragradient)."""
        if self.cfg.spec.extragradient and state.epoch % 2 == 1:
            if state.micro != 0:
                raise RuntimeError("egpo: an iteration took more than one optimizer step")
            self.maker.population.load(state.epoch - 1)

    def step_metrics(self) -> dict:
        """The current rollout's metrics, logged with every optimizer step trained on it."""
        return {f"rollout/{k}": v for k, v in self._cache[1].metrics.items()} if self._cache else {}

    # -- loss -----------------------------------------------------------------------------------
    @property
    def unit_name(self) -> str:
        """What `examples_in` counts, for the loop's metrics (`tokens_seen`, ...)."""
        if self.cfg.spec.pairs:
            return "pairs"
        return {"token_mean": "tokens", "seq_mean_token_mean": "sequences"}.get(self.cfg.loss_reduction, "token_slots")

    def examples_in(self, mb: OnlineMicroBatch) -> int:
        c = self.cfg
        if c.spec.pairs:
            return len(mb.rows) // 2
        if c.loss_reduction == "token_mean":
            return int(mb.mask.sum())
        if c.loss_reduction == "seq_mean_token_mean":
            return int((mb.mask.sum(-1) > 0).sum())
        return len(mb.rows) * c.max_new_tokens  # constant (Dr. GRPO)

    def loss(self, scorer, mb: OnlineMicroBatch):
        per_example, metrics = self._rl_loss(scorer, mb)
        if mb.ptx is None:
            return per_example, metrics
        # gamma * L_ptx enters the loss with this micro-batch's share of the window's units, so the
        # loop's sum / n_total leaves exactly gamma * (unit-weighted mean of L_ptx) in the gradient

        out, _ = scorer(mb.ptx.to(next(self.scorer.parameters()).device), temperature=1.0, values=False)
        nll = ptx_nll(out.logps)
        metrics["ptx_loss"] = nll.detach()
        return torch.cat([per_example, (self.ptx.coef * nll * self.examples_in(mb)).reshape(1)]), metrics

    def _rl_loss(self, scorer, mb: OnlineMicroBatch):
        c = self.cfg
        device = next(self.scorer.parameters()).device
        out, values = scorer(mb.packed.to(device), entropy=mb.entropy)
        mask = mb.mask.to(device)
        logps = mb.to_bt(out.logps)  # (b, T)
        old = mb.old_logps.to(device)
        metrics: dict = {}
        if out.entropy is not None:
            metrics["entropy"] = out.entropy.mean()
        kl_tokens = None
        if mb.ref_logps is not None:
            kl_tokens = kl_estimate(logps, mb.ref_logps.to(device), c.kl_estimator)
            metrics["kl_token_mean"] = (kl_tokens.detach() * mask).sum() / mask.sum().clamp(min=1)
        if c.spec.preference:
            return self._preference_loss(logps, mask, mb, metrics)
        if c.spec.pairs:
            return self._p3o_loss(logps, old, mask, kl_tokens, mb, metrics)
        if c.spec.supervised:
            return self._supervised_loss(logps, mask, kl_tokens, metrics)
        token_loss, m = clipped_surrogate(logps, old, mb.advantages.to(device), mask, clip_low=c.clip_low,
                                          clip_high=c.clip_high or None, dual_clip=c.dual_clip or None, reduction="none")
        metrics.update(m)
        tokens = mask.sum().clamp(min=1)
        metrics["policy_loss"] = token_loss.detach().sum() / tokens
        if c.kl_mode == "loss" and kl_tokens is not None and self.ctl.kl_coef:
            token_loss = token_loss + self.ctl.kl_coef * kl_tokens * mask
        if c.spec.mirror_prox:  # Nash-MP's proximal term (1/eta) KL(pi || pi_k)
            anchor_kl = kl_estimate(logps, mb.anchor_logps.to(device), c.kl_estimator)
            metrics["kl_to_anchor"] = (anchor_kl.detach() * mask).sum() / mask.sum().clamp(min=1)
            token_loss = token_loss + anchor_kl * mask / c.eta
        if values is not None:
            v = mb.to_bt(values)  # (b, T, C)
            returns, old_v = mb.returns.to(device), mb.old_values.to(device)
            for k in range(v.shape[-1]):
                vl, vm = clipped_value_loss(v[..., k], old_v[..., k], returns[..., k], mask,
                                            clip=c.value_clip or None, reduction="none")
                token_loss = token_loss + c.vf_coef * vl
                metrics["value_loss" if k == 0 else f"value_loss/{k}"] = vl.detach().sum() / tokens
                metrics.update({f"{name}/{k}" if k else name: val for name, val in vm.items()})
        return self._per_sequence(token_loss, mask), metrics

    def _per_sequence(self, token_loss, mask):
        """(b,) per-sequence losses the loop sums and divides by the window's units: token sums,
        or token means per sequence (seq_mean_token_mean; empty sequences left out)."""
        per_seq = token_loss.sum(-1)
        if self.cfg.loss_reduction == "seq_mean_token_mean":
            lengths = mask.sum(-1)
            per_seq = (per_seq / lengths.clamp(min=1))[lengths > 0]
        return per_seq

    def _preference_loss(self, logps, mask, mb, metrics):
        """Online DPO on the micro-batch's pairs (rows 2k, 2k+1; targets P(row 2k ≻ row 2k+1)):
        the pairwise loss with beta = kl_coef under the (soft or hard) target, plus XPO's or VPO's
        exploration term on each pair's reference sample."""
        c = self.cfg
        spec = LOSSES[c.preference_loss]
        seq, lengths = (logps * mask).sum(-1), mask.sum(-1)  # (b,)
        ref = (mb.ref_logps.to(seq.device) * mask).sum(-1) if mb.ref_logps is not None else None
        a, b = slice(0, None, 2), slice(1, None, 2)
        if c.spec.no_regret:  # INPO: pi_t = the policy that sampled (its sampling log-probs); MNPO: the mean
            # log-probs of the population of past iterates
            population = mb.population_logps if c.spec.preference_objective == "mnpo" else mb.old_logps
            previous = (population.to(seq.device) * mask).sum(-1)
            per_pair = inpo_pair_losses(seq[a], seq[b], previous[a], previous[b], ref[a], ref[b],
                                        mb.rewards.to(seq.device)[a], beta=self.ctl.kl_coef, eta=c.eta)
            metrics["policy_loss"] = per_pair.detach().mean()
            return per_pair, metrics
        per_pair, m = soft_preference_loss(
            spec.fn, seq[a], seq[b], ref[a] if spec.needs_reference else None, ref[b] if spec.needs_reference else None,
            mb.rewards.to(seq.device)[a], beta=self.ctl.kl_coef,
            lengths_a=lengths[a] if spec.needs_lengths else None, lengths_b=lengths[b] if spec.needs_lengths else None,
            **{**spec.options, **c.preference_loss_options})
        metrics.update(m)
        metrics["policy_loss"] = per_pair.detach().mean()
        if mb.from_reference is not None:  # one reference sample per pair (exploration: 1 policy + 1 reference)
            explored = mb.from_reference.to(seq.device)
            if c.exploration == "xpo":
                bonus = xpo_bonus(seq[explored], alpha=c.exploration_coef)
            else:
                bonus = vpo_bonus(seq[explored], ref[explored], alpha=c.exploration_coef, beta=self.ctl.kl_coef)
            metrics["exploration_term"] = bonus.detach().mean()
            per_pair = per_pair + bonus
        return per_pair, metrics

    def _supervised_loss(self, logps, mask, kl_tokens, metrics):
        """RAFT / SuperHF on the selected samples y* (the best of each prompt's n):
        per token -log pi(y*_t | x, y*_<t), plus SuperHF's KL prior beta * KL_t(pi || pi_ref)
        estimated on the same tokens; reduced like every online loss (`loss_reduction`)."""
        token_loss = -logps * mask
        tokens = mask.sum().clamp(min=1)
        metrics["sft_loss"] = token_loss.detach().sum() / tokens
        if kl_tokens is not None and self.ctl.kl_coef:
            token_loss = token_loss + self.ctl.kl_coef * kl_tokens * mask
        return self._per_sequence(token_loss, mask), metrics

    def _p3o_loss(self, logps, old, mask, kl_tokens, mb, metrics):
        c = self.cfg
        seq, old_seq = (logps * mask).sum(-1), (old * mask).sum(-1)  # (b,)
        rewards = mb.rewards.to(seq.device)
        per_pair, m = p3o_loss(seq[0::2], seq[1::2], old_seq[0::2], old_seq[1::2], rewards[0::2], rewards[1::2],
                               clip=c.clip_low, per_example=True)
        metrics["policy_loss"] = per_pair.detach().mean()
        if c.kl_mode == "loss" and kl_tokens is not None and self.ctl.kl_coef:
            per_seq_kl = (kl_tokens * mask).sum(-1)
            per_pair = per_pair + self.ctl.kl_coef * (per_seq_kl[0::2] + per_seq_kl[1::2])
        metrics.update(m)
        return per_pair, metrics

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, scorer) -> dict[str, float]:
        if not self.eval_rows:
            return {}

        c = self.cfg
        rows = self.eval_rows[: c.eval_prompts]
        prompts = [r["prompt"] for r in rows]
        ids = [encode_prompt(self.tokenizer, p) for p in prompts]
        greedy = c.eval_temperature == 0
        params = SamplingParams(n=1, temperature=c.eval_temperature or 1.0, max_new_tokens=c.max_new_tokens,
                                seed=c.seed + 12_345, greedy=greedy, stop_strings=tuple(c.stop_strings) or None)
        out = self.maker.generator.generate(ids, params)
        scores = self.eval_rewards.score(prompts, out.texts)
        metrics = {"reward": float(scores.mean()), "response_length": sum(map(len, out.completion_ids)) / len(out)}
        metrics.update({f"reward/{k}": float(v.mean()) for k, v in self.eval_rewards.last_parts.items()})
        if not greedy and self.maker.reference_scorer is not None:
            metrics["kl_to_reference"] = self._sample_kl(out)
        return metrics

    def _sample_kl(self, out) -> float:
        """Monte-Carlo KL(pi || pi_ref) per sequence on the evaluation samples."""

        batch = RolloutBatch(-1, 1, [None] * len(out), out.prompt_ids, out.completion_ids, out.texts, out.finished,
                             mask=pad_tokens([[1.0] * len(x) for x in out.completion_ids]),
                             old_logps=pad_tokens(out.logprobs), rewards=torch.zeros(len(out)))
        rows = list(range(len(out)))
        with reference_context(self.maker.model):
            ref, _ = token_pass(self.maker.reference_scorer, batch, rows, self.pad_token_id, self.cfg.batch_size,
                                reference=True)
        return float(((batch.old_logps - ref) * batch.mask).sum(-1).mean())


def _build_models(cfg: OnlineConfig, model=None):
    """Policy (+LoRA), its PolicyValue scorer, and the reference scorer (the adapter-disabled
    policy with LoRA; a frozen copy for full fine-tuning, only when the KL, PAR or Nash-MD's
    opponent needs one)."""
    model = trainable_policy(cfg, model)
    scorer = PolicyValue(model, cfg.spec.critics, temperature=cfg.temperature)
    reference = None
    # with LoRA the reference costs nothing to keep (the adapter-disabled policy): evaluations then
    # report the KL to it even when training does not use it
    if cfg.kl_coef > 0 or cfg.par_references or cfg.kl_target or cfg.spec.mixture_opponent or is_peft(model):
        if is_peft(model):
            reference = PolicyValue(model, 0, temperature=cfg.temperature)  # used under disable_adapter()
        else:
            frozen = copy.deepcopy(model).eval().requires_grad_(False)
            reference = PolicyValue(frozen, 0, temperature=cfg.temperature)
    return model, scorer, reference


def train_online(cfg: OnlineConfig, *, model=None, tokenizer=None, train_rows=None, eval_rows=None, rewards=None,
                 eval_rewards=None, cost=None, judge=None, dry_run: bool = False) -> TrainingSession:
    """Python API: train per `cfg`. Prompts (rows {prompt, answer?}), the model, reward/cost
    sources and online DPO's judge (a `PreferenceSource`) may be given in memory instead of by name. Returns the session; its `summary` is also
    written to the run's summary.json. Settings left at their dataclass defaults take the method's
    paper defaults (`fill_defaults`), as on the command line."""
    cfg = fill_defaults(cfg)
    cfg.validate()
    train_rows, eval_rows = _prompt_rows(cfg, train_rows, eval_rows)
    cfg.check_eval_source(bool(eval_rows))
    session = open_session(cfg, cfg.method, dry_run=dry_run)
    session.train_examples, session.eval_examples = train_rows, eval_rows
    if dry_run:
        return describe(session, "completions", _model_lines(cfg, model), _batch_lines(cfg, len(train_rows), len(eval_rows)))
    session.tokenizer = tokenizer = tokenizer or load_tokenizer(cfg.model)
    answers = answers_of(train_rows + eval_rows)
    if rewards is None:
        rewards = build_rewards(cfg.reward, cfg.reward_weights or None, how=cfg.reward_how, answers=answers)
    elif not isinstance(rewards, WeightedRewards):
        rewards = WeightedRewards([rewards])
    if eval_rewards is None:
        extra = [s for s in cfg.eval_reward if s not in cfg.reward]
        eval_rewards = build_rewards(extra, how=cfg.reward_how, answers=answers) if extra else None
        eval_rewards = _combine(rewards, eval_rewards)
    if cfg.spec.needs_cost and cost is None:
        cost = build_reward_source(cfg.cost, how=cfg.reward_how, answers=answers)
    if judge is None and cfg.spec.judged and cfg.judge:
        judge = build_preference_source(cfg.judge, temperature=cfg.judge_temperature, seed=cfg.seed, answers=answers)
    model, scorer, reference = _build_models(cfg, model)
    start_training(session, model, data_files=[cfg.train_data, cfg.eval_data])
    if sharded_model(session.accelerator):
        raise ValueError("online training under FSDP or DeepSpeed is not supported: sampling needs the policy's full "
                         "weights on every process; launch with configs/accelerate/ddp.yaml (docs/distributed.md)")
    if reference is not None:
        reference.to(session.accelerator.device)  # the frozen copy of full fine-tuning (LoRA's is the model itself)
    pad = session.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    maker = RolloutMaker(cfg, model=model, scorer=scorer, reference_scorer=reference, tokenizer=tokenizer,
                         rewards=rewards, cost=cost, pad_token_id=pad, judge=judge)
    if cfg.spec.preference_objective == "mnpo":
        maker.population = Population(session.run_dir / "population", model, cfg.population)
    if cfg.spec.mirror_prox or cfg.spec.extragradient:  # pi_k / pi_t, kept from a half step's start through the
        maker.population = Population(session.run_dir / "anchors", model, 2)  # full step
    ctl = Controllers(kl_coef=cfg.kl_coef, lagrange=cfg.lagrange_init if cfg.spec.needs_cost else 0.0)
    ptx = _ptx_mixer(cfg, tokenizer, pad)
    algorithm = OnlineAlgorithm(cfg, scorer=scorer, maker=maker, tokenizer=tokenizer, train_rows=train_rows,
                                eval_rows=eval_rows, eval_rewards=eval_rewards, run_dir=session.run_dir,
                                pad_token_id=pad, controllers=ctl, ptx=ptx)
    before = _eval_before(algorithm, scorer, session.run_dir)

    def save():
        final = save_final(model, tokenizer, session.run_dir / "final", merge_lora=cfg.merge_lora)
        scorer.save_value_head(final / "value_head.safetensors")
        return final

    start = time.perf_counter()
    # the loop's epoch is one rollout iteration
    loop_cfg = dataclasses.replace(cfg, epochs=float(cfg.iterations))
    if cfg.spec.extragradient:  # one optimizer step per iteration, on the whole rollout
        loop_cfg.grad_accum = -(-algorithm.planned_micro_batches() // dist.world_size())
    run_training(session, algorithm, scorer, scorer, save=save, loop_cfg=loop_cfg)
    session.summary.update(_summary(cfg, session.state, session.run_dir, time.perf_counter() - start),
                           eval_before=before, **(ptx.report if ptx is not None else {}))
    if cfg.spec.needs_cost and cfg.hc_delta:
        session.summary["safety_test"] = run_safety_test(cfg, maker, eval_rows, cost)
    return close_session(session)


def _batch_lines(cfg: OnlineConfig, n_train: int, n_eval: int) -> list[str]:
    completions = cfg.prompts_per_step * cfg.samples_per_prompt
    world = launched_processes()
    micro = -(-completions // cfg.batch_size)  # per pass, whole prompt groups aside
    per_iteration = -(-cfg.ppo_epochs * micro // (cfg.grad_accum * world))
    return [
        "rollouts and batch arithmetic:",
        f"  {cfg.iterations} iterations x {cfg.prompts_per_step} prompts x {cfg.samples_per_prompt} samples "
        f"(up to {cfg.max_new_tokens} new tokens) = {completions} completions per iteration",
        f"  {cfg.batch_size} completions per micro-batch per device x {cfg.grad_accum} accumulation x {world} "
        f"process(es) = {cfg.batch_size * cfg.grad_accum * world} per optimizer step; each process samples and "
        f"scores {-(-cfg.prompts_per_step // world)} of the prompts",
        f"  {cfg.ppo_epochs} pass(es) "
        f"over each rollout: {per_iteration} optimizer steps per iteration, {cfg.iterations * per_iteration} in all",
        f"  {n_train} training prompts, {n_eval} held-out prompts"
        + (f" ({min(n_eval, cfg.eval_prompts)} sampled at each evaluation)" if n_eval else " (no evaluation)"),
    ]


def _model_lines(cfg: OnlineConfig, model) -> list[str]:
    spec = cfg.spec
    needs_reference = cfg.kl_coef > 0 or cfg.par_references or cfg.kl_target
    reference = ("the policy with its LoRA adapter disabled (no second copy)" if cfg.lora else
                 "a frozen copy of the initial policy" if needs_reference else "not used (kl_coef 0)")
    lines = policy_lines(cfg, model, reference=reference)
    lines += [f"  critics: {spec.critics} value head(s)" if spec.critics else "  no critic",
              f"  rewards: {', '.join(cfg.reward)}; KL {cfg.kl_coef} as {cfg.kl_mode} ({cfg.kl_estimator})"
              + (f"; cost {cfg.cost}" if spec.needs_cost else "")
              + (f"; ptx mixing gamma {cfg.ptx_coef} on {cfg.ptx_data}" if cfg.ptx_data else "")]
    return lines


def _prompt_rows(cfg: OnlineConfig, train_rows, eval_rows) -> tuple[list[dict], list[dict]]:
    """Training and held-out prompts: given in memory, read from train_data / eval_data (a lab
    task's own eval split), or with eval_fraction a seeded share of the training prompts held out."""
    if train_rows is None:
        if not cfg.train_data:
            raise ValueError("no prompts: set train_data (a prompts file, or lab:sentiment / lab:arithmetic / lab:length)")
        train_rows = load_prompt_split(cfg.train_data, "train", 0, cfg.seed)
    if not train_rows:
        raise ValueError(f"{cfg.train_data}: no prompts")
    if cfg.eval_fraction:
        if eval_rows is not None:
            raise ConfigError("eval_fraction holds out a share of the training prompts, but held-out prompts were given")
        return split_prompts(train_rows, cfg.eval_fraction, cfg.seed)
    if eval_rows is None:
        source = cfg.eval_data or (cfg.train_data if cfg.train_data.startswith("lab:") else "")
        eval_rows = load_prompt_split(source, "eval", max(cfg.eval_prompts, cfg.safety_prompts if cfg.hc_delta else 0),
                                      cfg.seed) if source else []
    return train_rows, eval_rows


def split_prompts(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): round(fraction * N) prompts (at least 1) drawn by `seed`, never trained on."""
    k = max(1, round(fraction * len(rows)))
    if k >= len(rows):
        raise ConfigError(f"eval_fraction {fraction} of {len(rows)} prompts leaves none to train on")
    held = set(torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()[:k])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def _ptx_mixer(cfg: OnlineConfig, tokenizer, pad: int):
    """The pretraining/SFT mixing term's sampler, or None when it is off (said, when only half set)."""
    if not cfg.ptx_data:
        if cfg.ptx_coef > 0:
            print(f"alignlab: ptx_coef {cfg.ptx_coef} but no ptx_data: no pretraining/SFT mixing term")
        return None

    mixer = PtxMixer(cfg, tokenizer, pad)
    r = mixer.report["ptx_data"]
    print(f"alignlab: ptx mixing, gamma {cfg.ptx_coef}, {r['demonstrations']} demonstrations from {cfg.ptx_data}"
          f" ({r['truncated']} truncated, {r['dropped']} dropped at max_length {cfg.max_length})")
    return mixer


def _eval_before(algorithm: OnlineAlgorithm, scorer, run_dir: Path) -> dict:
    """The untrained policy's evaluation (kept in the run folder, so a resumed run reuses it)."""
    path = run_dir / "eval_before.json"
    if dist.broadcast_json(path.is_file()):  # the main process's view: all processes evaluate, or none
        return json.loads(path.read_text())
    was_training = scorer.training
    scorer.eval()
    metrics = algorithm.evaluate(scorer)
    scorer.train(was_training)
    if dist.is_main():
        path.write_text(json.dumps(metrics, indent=1))
    return metrics


def _combine(train, extra):
    """Evaluation reports the training rewards and any extra (e.g. gold) sources side by side."""
    if extra is None:
        return train
    return WeightedRewards(train.sources + extra.sources, train.weights + [0.0] * len(extra.sources),
                           train.names + extra.names)


def _summary(cfg, state, run_dir: Path, loop_seconds: float) -> dict:
    """The online run's own summary keys (the common ones come from `run_training`)."""
    steps = [r for r in state.history if "loss" in r]
    rollouts = [RolloutBatch.load(p).metrics for p in rollout_files(run_dir / "rollouts")]
    completions = sum(m["completions"] for m in rollouts)
    return {
        "method": cfg.method, "iterations": len(rollouts), "completions": completions,
        "generation_seconds": sum(m["time/generation"] for m in rollouts),
        "scoring_and_passes_seconds": sum(m["time/reference_and_old"] + m["time/scoring"] for m in rollouts),
        "loop_seconds": loop_seconds,
        # wall-clock throughput of the whole loop (evaluations and checkpoint saves included)
        "completions_per_second": completions / max(loop_seconds, 1e-9),
        "rollout_reward_first": rollouts[0]["reward/mean"] if rollouts else None,
        "rollout_reward_last": rollouts[-1]["reward/mean"] if rollouts else None,
        "final_loss": steps[-1]["loss"] if steps else None,
        **({"pairs": sum(m["pairs"] for m in rollouts), "ties_dropped": sum(m["pairs/ties_dropped"] for m in rollouts)}
           if cfg.spec.preference else {}),
    }
