"""`alignlab train pm`: the pairwise preference model (`alignlab.preferences.pairwise`) trained
on preference pairs by the reward-model trainer, objective `pm`: each pair (x, c, r) becomes the
Bradley-Terry comparison of the joint texts (x, [c, r]) and (x, [r, c]), so the loss is
−log σ(f(x, c, r) − f(x, r, c)) = −log P(c ≻ r) of the antisymmetric model. Its folder is a
reward-model folder marked objective "pm", read back as the preference source `pm:DIR`."""

from __future__ import annotations

from dataclasses import dataclass

from alignlab.config import ConfigError, field
from alignlab.train.reward import train_reward_model
from alignlab.train.reward_config import RMConfig


@dataclass
class PMConfig(RMConfig):
    objective: str = field("pm", "pm: the pairwise preference model (the only objective of this trainer)")
    max_length: int = field(1024, "max tokens of prompt + both responses (encoders: at most their position limit)")

    def validate(self) -> None:
        if self.objective != "pm":
            raise ConfigError("train pm trains the pairwise preference model (objective pm); "
                              "other objectives are trained by `alignlab train rm`")
        super().validate()


def train_pm(cfg: PMConfig, *, train_records=None, eval_records=None, dry_run: bool = False):
    """Python API: train a pairwise preference model per `cfg`; returns the session (its
    final_dir is the model, usable as the preference source pm:DIR)."""
    return train_reward_model(cfg, train_records=train_records, eval_records=eval_records, dry_run=dry_run)
