"""The settings every online method shares (PPO, GRPO, RLOO, REINFORCE++, ReMax, P3O, PPO-Lagrangian).

One dataclass, since these methods differ in a few switches (the advantage estimator, a critic,
the pairwise loss, the cost constraint) and share everything else: rollouts, reward sources, KL,
shaping, clipping, loss reduction. `ONLINE_METHODS` says what each method needs; presets give
each method the defaults of its paper (`OnlineConfig.context_defaults`), then YAML and flags override them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from alignlab.config import ConfigError, field, fill_defaults
from alignlab.losses import LOSSES
from alignlab.losses.advantages import ESTIMATORS
from alignlab.losses.control import LAGRANGE_UPDATES
from alignlab.losses.online_preference import PAIR_RULES
from alignlab.losses.policy import KL_ESTIMATORS
from alignlab.losses.reduce import REDUCTIONS
from alignlab.losses.shaping import PF_STRATEGIES, kept_per_group
from alignlab.train.config import TrainConfig


@dataclass(frozen=True)
class MethodSpec:
    """What an online method needs; the trainer asks these, never the method's name."""

    estimator: str | None
    """Advantage estimator of `alignlab.losses.advantages.ESTIMATORS`; None for a pairwise loss."""
    critics: int
    """Value heads: 0, 1 (reward) or 2 (reward and cost)."""
    needs_cost: bool
    """A cost source and a Lagrange multiplier (the constraint E[cost] <= d)."""
    pairs: bool
    """The loss compares two samples of one prompt (P3O): micro-batches keep pairs together, the
    loss counts pairs, samples_per_prompt must be even and a policy filter must keep two."""
    greedy_baseline: bool
    """A greedy response per prompt is generated and scored as the baseline (ReMax)."""
    paper: str
    preference: bool = False
    """Each prompt's samples are judged by a preference source (or ranked by the rewards), one pair
    per prompt is kept and labelled, and a DPO-family loss trains on the pairs (online DPO)."""
    supervised: bool = False
    """The loss is the negative log-likelihood of the samples the reward selected (RAFT, SuperHF):
    no advantages, no ratio clipping; the selection is `policy_filter` (best_of_n)."""
    preference_objective: str = "dpo"
    """With `preference`: the loss on the judged pairs: "dpo" (a DPO-family loss against the
    reference), "inpo" (INPO's no-regret step from the policy that sampled the pairs) or "mnpo"
    (the same step from the equally weighted population of the last `population` iterates)."""
    self_play: bool = False
    """Each sample's reward is its win rate against the prompt's other samples under the judge (a
    preference source, or the rewards through Bradley-Terry): SPO's self-play reward, then the
    method's estimator and KL penalty as usual."""
    mixture_opponent: bool = False
    """Each sample is judged against an opponent drawn from the token-level geometric mixture of
    the policy and the reference, pi^(1-m) pi_ref^m (Nash-MD); its reward is P(sample > opponent),
    then the method's estimator and KL penalty as usual."""
    mirror_prox: bool = False
    """Nash-MP: iterations alternate between mirror-prox half and full steps, both anchored at the
    policy of the half step's start, pi_k; the loss adds (1/eta) KL(pi || pi_k) to the KL to the
    reference (the rewards are self-play win rates)."""
    extragradient: bool = False
    """EGPO: one optimizer step per iteration on the whole rollout; odd iterations take the
    gradient at the current weights (pi_{t+1/2}, which sampled their pairs) and apply it from the
    weights of the previous iteration's start (pi_t)."""

    @property
    def no_regret(self) -> bool:
        """The pairs train INPO's or MNPO's no-regret loss (against past iterates and pi_ref)."""
        return self.preference_objective in ("inpo", "mnpo")

    @property
    def judged(self) -> bool:
        """A preference source (or the rewards through Bradley-Terry) judges the samples."""
        return self.preference or self.self_play or self.mixture_opponent

    @property
    def group_baseline(self) -> bool:
        """The estimator's baseline is the other samples of the prompt's group (GRPO, RLOO)."""
        return self.estimator is not None and ESTIMATORS[self.estimator].min_samples > 1


def _method(estimator, critics=0, *, cost=False, pairs=False, greedy=False, preference=False, supervised=False,
            objective="dpo", self_play=False, mixture=False, mirror_prox=False, extragradient=False,
            paper) -> MethodSpec:
    return MethodSpec(estimator, critics, cost, pairs, greedy, paper, preference, supervised, objective, self_play,
                      mixture, mirror_prox, extragradient)


ONLINE_METHODS: dict[str, MethodSpec] = {
    "ppo": _method("gae", 1, paper="Schulman et al. 2017 (arXiv 1707.06347); Ouyang et al. 2022"),
    "grpo": _method("grpo", paper="Shao et al. 2024, DeepSeekMath (arXiv 2402.03300)"),
    "rloo": _method("rloo", paper="Ahmadian et al. 2024, Back to Basics (arXiv 2402.14740)"),
    "reinforce_pp": _method("reinforce_pp", paper="Hu 2025, REINFORCE++ (arXiv 2501.03262)"),
    "remax": _method("remax", greedy=True, paper="Li et al. 2023, ReMax (arXiv 2310.10505)"),
    "p3o": _method(None, pairs=True, paper="Wu et al. 2023, Pairwise PPO (arXiv 2310.00212)"),
    "ppo_lagrangian": _method("gae", 2, cost=True,
                              paper="Dai et al. 2023, Safe RLHF (arXiv 2310.12773); HC-RLHF (Chittepu et al. 2025)"),
    "online-dpo": _method(None, pairs=True, preference=True,
                          paper="Dong et al. 2024, RLHF Workflow (arXiv 2405.07863); XPO (arXiv 2405.21046); "
                                "VPO (arXiv 2405.19320); OSP soft preferences"),
    "inpo": _method(None, pairs=True, preference=True, objective="inpo",
                    paper="Zhang et al. 2024, Iterative Nash Policy Optimization (INPO, arXiv 2407.00617)"),
    "mnpo": _method(None, pairs=True, preference=True, objective="mnpo",
                    paper="Wu et al. 2025, Multiplayer Nash Preference Optimization (MNPO, arXiv 2509.23102)"),
    "egpo": _method(None, pairs=True, preference=True, extragradient=True,
                    paper="Extragradient Preference Optimization (EGPO, arXiv 2503.08942)"),
    "spo": _method("rloo", self_play=True,
                   paper="Swamy et al. 2024, A Minimaximalist Approach to RLHF (SPO, arXiv 2401.04056)"),
    "nash-md": _method("rloo", mixture=True,
                       paper="Munos et al. 2023, Nash Learning from Human Feedback (Nash-MD, arXiv 2312.00886)"),
    "nash-mp": _method("rloo", self_play=True, mirror_prox=True,
                       paper="Accelerating Nash Learning from Human Feedback via Mirror Prox (Nash-MP, arXiv 2505.19731)"),
    "raft": _method(None, supervised=True, paper="Dong et al. 2023, RAFT: Reward rAnked FineTuning (arXiv 2304.06767)"),
    "superhf": _method(None, supervised=True,
                       paper="Mukobi et al. 2023, SuperHF: Supervised Iterative Learning from Human Feedback (arXiv 2310.16763)"),
}

# Paper defaults per method, applied before YAML/flags. PPO-max (Secrets of RLHF I) is the
# `ppo_max` preset: reward normalization and clipping, token-level KL penalty, value clipping,
# advantage whitening, pretraining-loss mixing (ptx_coef 1.0) when ptx_data is given.
METHOD_DEFAULTS: dict[str, dict] = {
    "ppo": {"samples_per_prompt": 1, "kl_mode": "reward", "kl_estimator": "k1", "ppo_epochs": 2},
    "grpo": {"samples_per_prompt": 4, "kl_mode": "loss", "kl_estimator": "k3", "kl_coef": 0.04},
    "rloo": {"samples_per_prompt": 4, "kl_mode": "reward", "kl_estimator": "k1"},
    "reinforce_pp": {"samples_per_prompt": 1, "kl_mode": "reward", "kl_estimator": "k1"},
    "remax": {"samples_per_prompt": 1, "kl_mode": "reward", "kl_estimator": "k1"},
    "p3o": {"samples_per_prompt": 2, "kl_mode": "reward", "kl_estimator": "k1"},
    "ppo_lagrangian": {"samples_per_prompt": 1, "kl_mode": "reward", "kl_estimator": "k1", "ppo_epochs": 2},
    # RLHF Workflow's online iterative DPO: beta = kl_coef as DPO's 0.1, best-vs-worst of n samples
    "online-dpo": {"samples_per_prompt": 4, "kl_coef": 0.1},
    # INPO: uniformly drawn pairs of the policy's samples (pairs from pi_t), the judge's probability
    # as the label's expectation; beta = kl_coef, eta beta <= 1
    "inpo": {"samples_per_prompt": 2, "kl_coef": 0.1, "pair_rule": "random", "soft_labels": True, "eta": 1.0},
    # MNPO: INPO's loss against the equally weighted last `population` iterates (pi_t and before)
    "mnpo": {"samples_per_prompt": 2, "kl_coef": 0.1, "pair_rule": "random", "soft_labels": True, "eta": 1.0,
             "population": 3},
    # EGPO: online IPO (tau = kl_coef) on uniformly drawn pairs of the policy's samples, in
    # expectation over the judge's label, minimized by extragradient steps
    "egpo": {"samples_per_prompt": 2, "kl_coef": 0.1, "pair_rule": "random", "soft_labels": True,
             "preference_loss": "ipo"},
    # SPO: n samples a prompt judged round robin; each one's win rate is its reward (RLOO baseline,
    # the KL to the reference as a per-token reward penalty)
    "spo": {"samples_per_prompt": 4, "kl_mode": "reward", "kl_estimator": "k1", "kl_coef": 0.05},
    # Nash-MD-PG (sec. 7): each sample judged against an opponent of the geometric mixture
    # pi^(1-m) pi_ref^m; reward P(y > y'), KL to the reference as a per-token reward penalty
    # (beta = kl_coef); the RLOO baseline over a prompt's n samples in place of the paper's 1/2
    "nash-md": {"samples_per_prompt": 2, "kl_mode": "reward", "kl_estimator": "k1", "kl_coef": 0.1,
                "mixture_coef": 0.125},
    # Nash-MP: self-play win rates against the policy at the iteration's start (pi_k on half steps,
    # pi_{k+1/2} on full steps), beta KL(pi || pi_ref) and (1/eta) KL(pi || pi_k) as loss terms (k3)
    "nash-mp": {"samples_per_prompt": 4, "kl_mode": "loss", "kl_estimator": "k3", "kl_coef": 0.1, "eta": 1.0},
    # RAFT: sample K, keep the best of each prompt's K, fine-tune on them; no KL term
    "raft": {"samples_per_prompt": 4, "policy_filter": "best_of_n", "kl_coef": 0.0, "kl_mode": "loss"},
    # SuperHF: the same filtered fine-tuning plus a KL prior to the reference on the kept samples
    "superhf": {"samples_per_prompt": 4, "policy_filter": "best_of_n", "kl_coef": 0.35, "kl_mode": "loss",
                "kl_estimator": "k3"},
}
PRESETS: dict[str, dict] = {
    "ppo_max": {"reward_normalize": True, "reward_clip": 5.0, "kl_mode": "reward", "kl_estimator": "k1",
                "value_clip": 0.2, "whiten_advantages": True, "max_grad_norm": 1.0, "ptx_coef": 1.0},
}


# Settings inherited from TrainConfig that no online trainer reads: setting one is an error (a
# setting that does nothing must not look as if it did), with what to use instead.
NOT_READ: dict[str, str] = {
    "epochs": "the run's length is `iterations` (rollouts) times `ppo_epochs` (passes over each)",
    "data_format": "prompts are read from a JSONL `prompt` field or one per line of a .txt file",
    "columns": "prompts are read from the JSONL `prompt` (and `answer`) fields",
    "pairing": "online methods score their own samples and read no preference pairs",
    "skip_invalid": "an invalid prompt line is always an error",
    "max_prompt_length": "prompts are not truncated",
}
ROLLOUT_DTYPES = ("float32", "bfloat16")
EVAL_SETTINGS = ("eval_prompts", "eval_temperature", "eval_every", "eval_reward")


def _default(name: str):
    f = OnlineConfig.__dataclass_fields__[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


@dataclass
class OnlineConfig(TrainConfig):
    method: str = field("grpo", "ppo | grpo | rloo | reinforce_pp | remax | p3o | ppo_lagrangian | online-dpo | inpo | mnpo | egpo | spo | nash-md | nash-mp | raft | superhf (set by `alignlab train METHOD`)")
    preset: str = field("", "named bundle of settings applied before yours: ppo_max")
    reward: list = field(["lab:sentiment"], "reward sources, summed with reward_weights: lab:sentiment | lab:arithmetic | lab:length | math (answer column, math-verify) | rm:DIR | python:module:function")
    reward_weights: list = field([], "weight of each reward source (default 1 each)")
    reward_how: str = field("mean", "how an ensemble reward model's members are aggregated: mean | wco | uwo")
    eval_reward: list = field([], "reward sources reported at evaluation only (e.g. the lab's gold reward); default: the training ones")
    cost: str = field("", "cost source for ppo_lagrangian (same syntax as reward), e.g. rm:COST_MODEL_DIR")
    # rollouts
    prompts_per_step: int = field(16, "prompts sampled per rollout iteration")
    samples_per_prompt: int = field(4, "completions per prompt (the group size of GRPO/RLOO; 2 for P3O)")
    iterations: int = field(10, "rollout iterations (each: generate, score, then ppo_epochs passes of updates)")
    max_new_tokens: int = field(64, "completion length limit")
    temperature: float = field(1.0, "sampling temperature (the trainer scores tokens at the same temperature)")
    top_p: float = field(1.0, "nucleus sampling (1: off)")
    top_k: int = field(0, "top-k sampling (0: off)")
    stop_strings: list = field([], "extra strings that end a completion")
    rollout_batch_size: int = field(64, "completions generated per `generate` call (all prompts x n at once when it fits)")
    rollout_dtype: str = field("float32", "float32: the policy samples its own rollouts | bfloat16: a bf16 copy of the policy (LoRA merged in), made from its current weights each iteration, samples them; the old log-probs are then recomputed by the policy in one no-grad pass")
    rollout_backend: str = field("auto", "auto (vllm when vLLM and a CUDA device are present and nothing rules it out, else hf; the choice is printed) | hf (transformers generate) | vllm (a vLLM engine on the GPU, the policy's weights synced in before each call; needs vllm installed, no top_k/top_p truncation)")
    # KL to the reference
    kl_coef: float = field(0.05, "beta: weight of the KL to the reference (0: no reference pass at all)")
    kl_mode: str = field("reward", "reward: per-token penalty in the reward (k1 classic) | loss: a loss term (GRPO's k3)")
    kl_estimator: str = field("k1", "k1 | k2 | k3 (see alignlab.losses.policy.kl_estimate)")
    kl_target: float = field(0.0, "adaptive KL controller target in nats per sequence (0: fixed kl_coef)")
    kl_horizon: float = field(10000.0, "adaptive KL controller horizon (samples)")
    # policy update
    ppo_epochs: int = field(1, "passes over each rollout batch")
    clip_low: float = field(0.2, "PPO clip epsilon (lower side)")
    clip_high: float = field(0.0, "upper clip epsilon (0: = clip_low; larger = DAPO clip-higher)")
    dual_clip: float = field(0.0, "dual-clip constant c > 1 for negative advantages (0: off)")
    loss_reduction: str = field("token_mean", "token_mean | seq_mean_token_mean | constant (Dr. GRPO: / max_new_tokens)")
    scale_rewards: bool = field(True, "GRPO: divide group-centered rewards by the group std (false: Dr. GRPO)")
    whiten_advantages: bool = field(True, "PPO: whiten GAE advantages over the batch")
    gamma: float = field(1.0, "discount of the token MDP")
    lam: float = field(0.95, "GAE lambda")
    vf_coef: float = field(0.1, "weight of the value loss (PPO, shared-backbone value head)")
    value_clip: float = field(0.2, "PPO value clipping (0: off)")
    reward_normalize: bool = field(False, "normalize rewards by running mean/std (PPO-max)")
    reward_clip: float = field(0.0, "clip rewards to [-c, c] after normalization (0: off)")
    # shaping and filtering
    length_penalty: float = field(0.0, "reward -= coef * response tokens (or * |tokens - length_target|)")
    length_target: int = field(0, "wanted response length for the length penalty (0: penalize every token)")
    par_references: int = field(0, "PAR shaping: reward = mean sigmoid(r - r_ref) over this many reference-policy samples per prompt (0: off)")
    policy_filter: str = field("none", "PF-PPO filtration per prompt group: none | best_of_n | best_random | best_worst")
    # online DPO (online-dpo)
    judge: str = field("", "online-dpo, inpo, mnpo, egpo, spo, nash-md, nash-mp: preference source that judges the samples: annotator:REWARD | pm:DIR | judge:MODEL | a reward spec (empty: the reward sources through Bradley-Terry at judge_temperature)")
    judge_temperature: float = field(1.0, "online-dpo, inpo, mnpo, egpo, spo, nash-md, nash-mp: Bradley-Terry temperature of reward-based judging (and of reward specs given as judge)")
    pair_rule: str = field("best_worst", "online-dpo: which two of a prompt's samples form its pair: best_worst | best_random | random (ranked by expected win rate in the group)")
    preference_loss: str = field("dpo", "online-dpo: the pairwise loss: dpo | ipo | cdpo | hinge | simpo | cpl | fdpo_js | fdpo_fkl | fdpo_alpha (beta = kl_coef)")
    preference_loss_options: dict = field({}, "online-dpo: options of the pairwise loss, e.g. {label_smoothing: 0.1} (cdpo)")
    eta: float = field(0.0, "inpo, mnpo: the no-regret step size (0 < eta * kl_coef <= 1; each iteration moves pi toward pi_t^(1-eta beta) pi_ref^(eta beta) exp(eta P(. > pi_t))); nash-mp: the proximal step size (the loss weighs KL(pi || pi_k) by 1/eta)")
    population: int = field(0, "mnpo: m, the past iterates the loss plays against: pi_t and the m - 1 iterates before it (fewer in the first iterations), equally weighted")
    mixture_coef: float = field(0.0, "nash-md: m, the reference's share of the opponent: opponents are sampled token by token from pi^(1-m) pi_ref^m (normalized)")
    soft_labels: bool = field(False, "online-dpo: train on the judge's probability P(a > b) instead of a hard label (OSP's soft-preference loss)")
    reference_update: str = field("fixed", "online-dpo: fixed (the initial model) | refresh (each iteration's reference is the policy that sampled it)")
    exploration: str = field("none", "online-dpo: none | xpo | vpo: each prompt's one policy sample is paired with a reference sample, whose log-likelihood enters the loss with exploration_coef")
    exploration_coef: float = field(0.0, "online-dpo: alpha of the XPO / VPO exploration term (must be set > 0 with exploration)")
    mask_truncated: bool = field(False, "leave completions cut off at max_new_tokens out of the loss (DAPO's overlong filtering; advantages still use their rewards)")
    # pretraining/SFT mixing (InstructGPT's PPO-ptx, part of PPO-max)
    ptx_data: str = field("", "demonstrations (JSONL: prompt + response, or text) whose NLL is mixed into the loss (empty: off)")
    ptx_coef: float = field(0.0, "gamma: weight of the demonstrations' token-mean NLL (the ppo_max preset sets 1.0)")
    ptx_batch_size: int = field(4, "demonstrations per micro-batch of policy updates")
    # safety (ppo_lagrangian)
    cost_threshold: float = field(0.0, "d: the constraint is E[cost] <= d")
    lagrange_init: float = field(1.0, "initial Lagrange multiplier lambda")
    lagrange_lr: float = field(0.05, "step size of lambda's gradient ascent, per iteration")
    lagrange_update: str = field("additive", "lambda's update: additive (lambda += lr * (J_C - d), projected onto >= 0; the paper's) | log (log lambda += lr * lambda * (J_C - d); Safe RLHF's code)")
    hc_delta: float = field(0.0, "HC-RLHF: optimize under the (1 - delta) upper confidence bound of the cost and run the held-out safety test at the end (0: off)")
    hc_inflation: float = field(2.0, "HC-RLHF: width multiplier of the pessimistic bound during training")
    safety_prompts: int = field(64, "HC-RLHF: held-out prompts (from eval data) sampled for the safety test")
    # evaluation
    eval_prompts: int = field(32, "held-out prompts sampled at each evaluation")
    eval_temperature: float = field(0.0, "evaluation sampling temperature (0: greedy)")
    log_entropy: bool = field(True, "compute the policy entropy on the first update of each rollout")

    def context_defaults(self, given: frozenset) -> dict:
        """The method's paper defaults, then its preset's, for the settings the user did not give
        (`alignlab.config.resolve` applies them and `sources` names them)."""
        out = {k: (v, f"{self.method} default") for k, v in METHOD_DEFAULTS.get(self.method, {}).items()}
        if self.spec.preference and self.exploration != "none":  # XPO/VPO: one policy and one reference sample
            out["samples_per_prompt"] = (1, f"{self.exploration} default")
        out.update({k: (v, f"{self.preset} preset") for k, v in PRESETS.get(self.preset, {}).items()})
        return {k: v for k, v in out.items() if k not in given}

    @property
    def spec(self) -> MethodSpec:
        return ONLINE_METHODS[self.method]

    def unread_settings(self) -> dict[str, str]:
        """Settings this method (with these switches) never reads -> why."""
        spec, out = self.spec, dict(NOT_READ)
        if not self.ptx_data:
            out.update(dict.fromkeys(("max_length", "truncation", "ptx_batch_size"),
                                     "it applies to ptx_data only (prompts are not truncated)"))
        if not spec.critics:
            out.update(dict.fromkeys(("vf_coef", "value_clip", "lam"), f"{self.method} has no critic"))
        if spec.estimator != "gae":
            out["whiten_advantages"] = f"{self.method} does not use GAE advantages"
        if spec.estimator != "grpo":
            out["scale_rewards"] = "it is GRPO's group-std scaling"
        if spec.estimator not in ("gae", "reinforce_pp"):
            out["gamma"] = f"{self.method} uses sequence-level advantages (no discounting)"
        if not spec.needs_cost:
            out.update(dict.fromkeys(("cost", "cost_threshold", "lagrange_init", "lagrange_lr", "lagrange_update",
                                      "hc_delta", "hc_inflation", "safety_prompts"), "it applies to ppo_lagrangian only"))
        elif not self.hc_delta:
            out.update(dict.fromkeys(("hc_inflation", "safety_prompts"), "it applies with hc_delta > 0 only"))
        if not spec.preference:
            out.update(dict.fromkeys(("pair_rule", "preference_loss", "preference_loss_options", "soft_labels",
                                      "reference_update", "exploration", "exploration_coef"),
                                     "it applies to online-dpo only"))
        if spec.preference_objective != "mnpo":
            out["population"] = "it is MNPO's number of past iterates (mnpo only)"
        if not (spec.no_regret or spec.mirror_prox):
            out["eta"] = "it is the no-regret or mirror-prox step size (inpo, mnpo and nash-mp only)"
        if spec.no_regret:
            out.update(dict.fromkeys(("preference_loss", "preference_loss_options", "exploration", "exploration_coef",
                                      "reference_update"),
                                     f"{self.method}'s loss is its own, against the fixed reference and past iterates"))
        if spec.extragradient:
            out.update(dict.fromkeys(("grad_accum", "ppo_epochs"),
                                     "egpo takes one extragradient step per iteration, on the whole rollout"))
            out.update(dict.fromkeys(("exploration", "exploration_coef", "reference_update"),
                                     "egpo's loss is online IPO against the fixed reference"))
        if not spec.mixture_opponent:
            out["mixture_coef"] = "it is the opponent's mixture with the reference (nash-md only)"
        if not spec.judged:
            out.update(dict.fromkeys(("judge", "judge_temperature"),
                                     "it applies to online-dpo, inpo, mnpo, egpo, spo, nash-md and nash-mp only"))
        else:
            if spec.preference:
                out.update(dict.fromkeys(("clip_low", "clip_high", "dual_clip", "kl_mode", "kl_estimator", "kl_target",
                                          "reward_normalize", "reward_clip", "par_references", "policy_filter"),
                                         f"{self.method} trains a pairwise loss on judged pairs (beta = kl_coef)"))
            if self.judge:
                out["length_penalty"] = "it shapes rewards, and with a judge set the rewards are only logged"
                out["length_target"] = out["length_penalty"]
        if spec.supervised:
            out.update(dict.fromkeys(("clip_low", "clip_high", "dual_clip"),
                                     f"{self.method} fine-tunes on the selected samples (no probability ratio to clip)"))
        if not self.kl_target:
            out["kl_horizon"] = "it applies with kl_target > 0 only (the adaptive KL controller)"
        return out

    def check_eval_source(self, has_eval_prompts: bool | None = None) -> None:
        """Refuse evaluation settings when there are no held-out prompts to evaluate on (None: as
        the settings say: eval_data, eval_fraction or a lab task's eval split)."""
        if has_eval_prompts is None:
            has_eval_prompts = bool(self.eval_data or self.eval_fraction or self.train_data.startswith("lab:"))
        if has_eval_prompts:
            return
        fix = "give eval_data, or eval_fraction to hold out a share of train_data's prompts"
        if self.hc_delta:
            raise ConfigError(f"hc_delta: HC-RLHF's safety test samples held-out prompts, and there are none: {fix}")
        for name in EVAL_SETTINGS:
            if getattr(self, name) != _default(name):
                raise ConfigError(f"{name} is set but there are no held-out prompts to evaluate on: {fix}")

    def validate(self) -> None:
        super().validate()
        checks = [
            (self.method in ONLINE_METHODS, f"method must be one of {sorted(ONLINE_METHODS)}"),
            (not self.preset or self.preset in PRESETS, f"preset must be one of {sorted(PRESETS)}"),
            (self.kl_mode in ("reward", "loss"), "kl_mode must be reward or loss"),
            (self.rollout_dtype in ROLLOUT_DTYPES, f"rollout_dtype must be one of {ROLLOUT_DTYPES}"),
            (self.rollout_backend in ("auto", "hf", "vllm"),
             f"rollout_backend must be auto, hf or vllm, got {self.rollout_backend!r}"),
            (self.rollout_backend != "vllm" or (self.top_k == 0 and self.top_p == 1.0),
             "rollout_backend vllm returns log-probs of the truncated distribution under top_k/top_p; leave them off "
             "or use rollout_backend hf"),
            (self.kl_estimator in KL_ESTIMATORS, f"kl_estimator must be one of {KL_ESTIMATORS}"),
            (self.loss_reduction in REDUCTIONS and self.loss_reduction != "sum",
             "loss_reduction must be token_mean, seq_mean_token_mean or constant"),
            (self.policy_filter in PF_STRATEGIES, f"policy_filter must be one of {PF_STRATEGIES}"),
            (self.samples_per_prompt >= 1 and self.prompts_per_step >= 1 and self.iterations >= 1,
             "samples_per_prompt, prompts_per_step and iterations must be >= 1"),
            (self.reward_how in ("mean", "wco", "uwo"), "reward_how must be mean, wco or uwo"),
            (not self.reward_weights or len(self.reward_weights) == len(self.reward),
             "reward_weights needs one weight per reward source"),
            (self.ppo_epochs >= 1, "ppo_epochs must be >= 1"),
            (self.dual_clip == 0 or self.dual_clip > 1, "dual_clip must be 0 (off) or > 1"),
            (0 <= self.hc_delta < 1, "hc_delta must be in [0, 1)"),
            (self.lagrange_update in LAGRANGE_UPDATES, f"lagrange_update must be one of {sorted(LAGRANGE_UPDATES)}"),
            (self.lagrange_update != "log" or self.lagrange_init > 0,
             "lagrange_update log needs lagrange_init > 0 (lambda = exp(log lambda) is never 0)"),
            (self.ptx_coef >= 0 and self.ptx_batch_size >= 1, "ptx_coef must be >= 0 and ptx_batch_size >= 1"),
            (not self.ptx_data or self.ptx_coef > 0, "ptx_data is set but ptx_coef is 0: set ptx_coef (gamma) > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.eval_fraction and (self.eval_data or self.train_data.startswith("lab:")):
            raise ConfigError("eval_fraction holds out a share of train_data when there is no other held-out set, but "
                              + ("eval_data is set" if self.eval_data else f"{self.train_data} has its own eval split"))
        spec = self.spec
        for name, why in self.unread_settings().items():
            if getattr(self, name) != _default(name):
                raise ConfigError(f"{name} is set but {self.method} training does not read it: {why}")
        if spec.group_baseline and self.samples_per_prompt < 2:
            raise ConfigError(f"{self.method} needs samples_per_prompt >= 2 (a group baseline)")
        if spec.pairs and not spec.preference and self.samples_per_prompt % 2:
            raise ConfigError(f"{self.method} compares pairs: samples_per_prompt must be even")
        if spec.needs_cost and not self.cost:
            raise ConfigError(f"{self.method} needs a cost source (cost: rm:DIR or python:module:function)")
        if self.policy_filter not in ("none", "best_of_n") and self.samples_per_prompt < 2:
            raise ConfigError(f"policy_filter {self.policy_filter} needs samples_per_prompt >= 2")
        if spec.preference:
            self._validate_preference()
        if spec.judged and not self.judge_temperature > 0:
            raise ConfigError("judge_temperature must be > 0")
        if spec.extragradient and self.preference_loss != "ipo":
            raise ConfigError(f"egpo's loss is online IPO: preference_loss must be ipo, got {self.preference_loss}")
        if spec.mirror_prox and not self.eta > 0:
            raise ConfigError(f"nash-mp needs eta (its proximal step size) > 0, got {self.eta}")
        if spec.mixture_opponent and not 0 <= self.mixture_coef <= 1:
            raise ConfigError(f"mixture_coef must be in [0, 1], got {self.mixture_coef}")
        if spec.supervised and self.policy_filter != "best_of_n":
            raise ConfigError(f"{self.method} fine-tunes on each prompt's best sample: policy_filter must be best_of_n")
        if spec.supervised and self.kl_mode != "loss":
            raise ConfigError(f"{self.method} has no rewards in its loss to penalize: its KL term is kl_mode loss")
        kept = kept_per_group(self.policy_filter, self.samples_per_prompt)
        if spec.pairs and not spec.preference and kept < 2:
            raise ConfigError(f"{self.method} compares two responses to the same prompt, but policy_filter {self.policy_filter} keeps"
                              f" {kept} per prompt (pairs would mix prompts): use none, best_worst or best_random")
        if spec.estimator and kept < ESTIMATORS[spec.estimator].min_samples:
            raise ConfigError(f"{self.method}'s group baseline needs >= {ESTIMATORS[spec.estimator].min_samples} samples"
                              f" per prompt, but policy_filter {self.policy_filter} keeps {kept}: use best_worst or"
                              " best_random")


    def _validate_preference(self) -> None:
        pairwise = [name for name, spec in LOSSES.items() if spec.kind == "pairwise"]
        checks = [
            (self.preference_loss in pairwise, f"preference_loss must be a pairwise loss: {', '.join(pairwise)}"),
            (self.pair_rule in PAIR_RULES, f"pair_rule must be one of {', '.join(PAIR_RULES)}"),
            (self.reference_update in ("fixed", "refresh"), "reference_update must be fixed or refresh"),
            (self.exploration in ("none", "xpo", "vpo"), "exploration must be none, xpo or vpo"),
            (self.kl_coef > 0, f"{self.method} needs kl_coef (its beta) > 0"),
            (self.judge_temperature > 0, "judge_temperature must be > 0"),
            (self.exploration == "none" or self.exploration_coef > 0,
             f"exploration {self.exploration} needs exploration_coef (alpha) > 0"),
            (self.exploration != "none" or self.exploration_coef == 0, "exploration_coef is set but exploration is none"),
            (self.exploration == "none" or self.samples_per_prompt == 1,
             "with exploration each prompt's pair is one policy sample and one reference sample: samples_per_prompt 1"),
            (self.exploration != "none" or self.samples_per_prompt >= 2,
             f"{self.method} builds each pair from a prompt's samples: samples_per_prompt must be >= 2"),
        ]
        if self.spec.no_regret:
            checks.append((0 < self.eta * self.kl_coef <= 1,
                           f"{self.method} needs 0 < eta * kl_coef <= 1, got eta {self.eta} and kl_coef {self.kl_coef}"))
            checks.append((self.spec.preference_objective != "mnpo" or self.population >= 1,
                           f"mnpo needs population >= 1, got {self.population}"))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        try:
            LOSSES[self.preference_loss].check_options(self.preference_loss_options)
        except ValueError as exc:
            raise ConfigError(f"preference_loss_options: {exc}") from None


def settings_help(method: str) -> str:
    """Every setting with its help and the value `alignlab train METHOD` starts from (the method's
    paper defaults applied), so that help, dry run and run show the same values."""
    cfg = fill_defaults(OnlineConfig(method=method), {"method"})
    unread = cfg.unread_settings()
    lines = [f"settings of `alignlab train {method}` (YAML keys or --flags), with {method}'s defaults:"]
    for f in dataclasses.fields(OnlineConfig):
        note = f" (not read with the defaults: {unread[f.name]})" if f.name in unread else ""
        lines.append(f"  --{f.name.replace('_', '-'):<24} {f.metadata.get('help', '')} [default: {getattr(cfg, f.name)!r}]"
                     + note)
    return "\n".join(lines)
