"""Settings of a reward-model run, its training items, and the table of objectives: each entry
names its loss (a pure function of `alignlab.losses.reward`), the records it reads, what its
items hold and what it trains. The trainer (`train/reward.py`) and the data setup
(`train/reward_data.py`) ask the table, never the objective's name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from alignlab.config import ConfigError, field
from alignlab.data.records import BinaryRecord, PairwiseRecord, RatingRecord
from alignlab.losses.reward import (
    binary_feedback,
    bradley_terry,
    cost_model_loss,
    gated_bradley_terry,
    rated_entries,
    rating_regression,
)
from alignlab.train.config import TrainConfig


@dataclass
class MemberScores:
    """One ensemble member's outputs at a micro-batch's B examples, for an objective's loss."""
    first: Tensor  # (B,) score of the chosen (or only) response
    second: Tensor  # (B,) score of the rejected (or only) response
    first_attributes: Tensor  # (B, A) attribute rewards of the chosen (or only) response
    second_attributes: Tensor  # (B, A)
    targets: Tensor  # (B, ...) as in Item.target
    masks: Tensor | None  # (B, A) ratings: which attributes are rated
    first_gate: Tensor | None = None  # (B, A) gate logits read for the chosen response
    second_gate: Tensor | None = None  # (B, A)
    log_beta: Tensor | None = None  # () the gate's Bradley-Terry scaling, log beta


def _pairwise(s: MemberScores, cfg):
    return bradley_terry(s.first, s.second, margin=s.targets[:, 0] if cfg.use_margin else None,
                         label_smoothing=cfg.label_smoothing, flip_rate=cfg.flip_rate, center_coef=cfg.center_coef,
                         per_example=True)


def _cost(s: MemberScores, cfg):
    unsafe = s.targets > 0.5  # (B, 2): chosen, rejected
    return cost_model_loss(s.first, s.second, unsafe[:, 0], unsafe[:, 1], per_example=True)


def _ratings(s: MemberScores, cfg):
    return rating_regression(s.first_attributes, s.targets, s.masks, per_example=True)


def _binary(s: MemberScores, cfg):
    return binary_feedback(s.first, s.targets[:, 0] > 0.5, per_example=True)


def _gate(s: MemberScores, cfg):
    return gated_bradley_terry(s.first_attributes, s.second_attributes, s.first_gate, s.second_gate, s.log_beta,
                               per_example=True)


@dataclass(frozen=True)
class ObjectiveSpec:
    """A reward-model objective: what it reads and trains, and its loss."""
    help: str
    loss: Callable  # (MemberScores, RMConfig) -> ((B,) per-example terms, metrics)
    record: type  # the record type its data must hold
    paired: bool  # items are (chosen, rejected) pairs (records loaded as pairs); else one response each
    attributes: str = "reward"  # reward: one score | data: the rating attributes in the data | model: the trained model's
    normaliser: Callable | None = None  # (masks) -> the count the per-example terms are divided by (None: examples)
    trains: str = "model"  # model: backbone and heads | gate: the gate of a trained ratings model, all else frozen
    center: bool = False  # shift each member to mean 0 over the training responses afterwards (center_rewards)
    reads: tuple = ()  # the pairwise loss options it reads
    safety_labels: bool = False  # pairs carry chosen_safe / rejected_safe labels (Item.target: unsafe flags)
    joint: bool = False  # pairwise preference model: each pair read as (joint(c, r), joint(r, c)) (preferences.pairwise)


BT_OPTIONS = ("use_margin", "label_smoothing", "flip_rate", "center_coef")
OBJECTIVES: dict[str, ObjectiveSpec] = {
    "pairwise": ObjectiveSpec("Bradley-Terry on preference pairs", _pairwise, PairwiseRecord, paired=True,
                              center=True, reads=BT_OPTIONS),
    "ratings": ObjectiveSpec("regress each rating attribute (ArmoRM stage 1; masked MSE over rated entries)", _ratings,
                             RatingRecord, paired=False, attributes="data", normaliser=rated_entries),
    "gate": ObjectiveSpec("train the prompt-conditioned gate of a trained ratings model (--model DIR) on preference "
                          "pairs, everything else frozen (ArmoRM stage 2)", _gate, PairwiseRecord, paired=True,
                          attributes="model", trains="gate"),
    "binary": ObjectiveSpec("thumbs-up classifier", _binary, BinaryRecord, paired=False),
    "cost": ObjectiveSpec("Safe RLHF cost model: pairs with chosen = safer, plus chosen_safe/rejected_safe labels",
                          _cost, PairwiseRecord, paired=True, safety_labels=True),
    "pm": ObjectiveSpec("pairwise preference model (`alignlab train pm`): one head on the prompt with both "
                        "responses, P(a ≻ b) = σ(f(x, a, b) − f(x, b, a)), Bradley-Terry on the two orders",
                        _pairwise, PairwiseRecord, paired=True, reads=BT_OPTIONS, joint=True),
}


@dataclass
class RMConfig(TrainConfig):
    model: str = field("embedded-encoder", "backbone: embedded-encoder (MiniLM-L6, fast on CPU), embedded (SmolLM2-135M), a local folder or hub id; objective gate: the folder of a trained ratings model")
    objective: str = field("pairwise", " | ".join(f"{k} ({v.help})" for k, v in OBJECTIVES.items()))
    learning_rate: float = field(5e-5, "peak learning rate")
    head_learning_rate: float = field(0.0, "peak learning rate of the reward head(s) and gate (0: learning_rate); a fresh head at a backbone's fine-tuning rate barely moves")
    ensemble: int = field(1, "K members: K heads on one shared backbone (frozen when K > 1), each on its own bootstrap weights")
    ensemble_kind: str = field("heads", "what the K members are: heads (K heads on one frozen backbone, one forward for all) | lora (K LoRA adapters on one frozen backbone, each with its own head: one copy of the weights; lora_r/lora_alpha/lora_target_modules/lora_layers apply. With lora_layers N the bottom layers run once per batch and each member only its top N: about the cost of one member when N is small; with every layer adapted, K forwards)")
    freeze_backbone: bool = field(False, "train only the heads (implied by ensemble > 1 with heads)")
    attributes: list = field([], "ratings objective: attribute names to regress (empty: every attribute found in the data)")
    use_margin: bool = field(False, "Llama-2 margin: subtract each pair's `margin` inside the sigmoid")
    label_smoothing: float = field(0.0, "assumed share of flipped labels (BT with label smoothing)")
    flip_rate: float = field(0.0, "pairwise: probability that an annotator flipped a label, in the BT likelihood itself (bounded loss: a pair the model confidently contradicts stops pulling); exclusive with label_smoothing")
    center_coef: float = field(0.0, "reward-centering regularizer: coef * (r_chosen + r_rejected)^2")
    center_rewards: bool = field(True, "pairwise: after training, shift each member's reward to average 0 over the training responses (Bradley-Terry fixes it only up to a constant per member; mean/WCO/UWO compare members on one scale). Differences, accuracy and BT probabilities are unchanged")
    strength_weighting: str = field("none", "use a `strength` in each pair's meta: none | weight (down-weight weak pairs) | flip (flip pairs with strength < 0)")
    max_length: int = field(512, "max tokens of prompt + response (encoders: at most their position limit)")
    truncation: str = field("truncate", "over-long examples: error | truncate (keep prompt end, response start) | drop")
    group_by_prompt: bool = field(False, "pairwise/cost: a micro-batch holds batch_size whole prompts with all their pairs, each distinct response encoded once (InstructGPT's batching, Ouyang et al. 2022 §3.5): K responses in all K(K-1)/2 pairs cost K forwards instead of K(K-1), and each response is one update per epoch, not K-1")

    @property
    def spec(self) -> ObjectiveSpec:
        return OBJECTIVES[self.objective]

    @property
    def run_name(self) -> str:
        """The algorithm name the run folder and summary record."""
        return "pm" if self.spec.joint else f"rm-{self.objective}"

    def validate(self) -> None:
        super().validate()
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}")
        if self.ensemble < 1:
            raise ConfigError("ensemble must be >= 1")
        if self.ensemble_kind not in ("heads", "lora"):
            raise ConfigError("ensemble_kind must be heads or lora")
        if self.ensemble_kind == "lora" and self.freeze_backbone:
            raise ConfigError("ensemble_kind lora trains one adapter per member: no freeze_backbone")
        if self.strength_weighting not in ("none", "weight", "flip"):
            raise ConfigError("strength_weighting must be none | weight | flip")
        if not 0.0 <= self.flip_rate < 0.5 or not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError("flip_rate and label_smoothing must be in [0, 0.5)")
        if self.group_by_prompt and not self.spec.paired:
            paired = ", ".join(k for k, v in OBJECTIVES.items() if v.paired)
            raise ConfigError(f"group_by_prompt batches the pairs of a prompt together: it needs objective {paired}")
        for name in BT_OPTIONS:
            if getattr(self, name) and name not in self.spec.reads:
                readers = " and ".join(k for k, v in OBJECTIVES.items() if name in v.reads)
                raise ConfigError(f"{name} is an option of objective {readers}; objective {self.objective} does not read it")
        if self.spec.trains == "gate" and (self.ensemble != 1 or self.lora or self.attributes or self.freeze_backbone):
            raise ConfigError(f"objective {self.objective} trains the gate of the ratings model given as --model: its "
                              "members, attributes and backbone come from that model (no ensemble, lora, attributes, "
                              "freeze_backbone)")
        if self.spec.joint and (self.ensemble != 1 or self.attributes):
            raise ConfigError("a pairwise preference model is one model with one score: no ensemble or attributes")
        if self.flip_rate and self.label_smoothing:
            raise ConfigError("label_smoothing and flip_rate are two models of the same label noise: set one")

    @property
    def frozen(self) -> bool:
        return self.freeze_backbone or (self.ensemble > 1 and self.ensemble_kind == "heads") or self.spec.trains == "gate"

    @property
    def lora_members(self) -> bool:
        return self.ensemble > 1 and self.ensemble_kind == "lora"


@dataclass
class Item:
    """One training example, tokenized: pairwise (chosen+rejected), rating or binary."""
    prompt_ids: list
    responses: list  # [chosen_ids, rejected_ids] | [response_ids]
    target: torch.Tensor  # pairwise: (1,) margin; ratings: (A,); binary: (1,) label; cost: (2,) unsafe flags
    mask: torch.Tensor | None = None  # ratings: (A,) which attributes are present
    weight: float = 1.0
    meta: dict | None = None
