"""What the lab's reward-model experiments (`lab bon-overoptimization`, `lab overoptimization`,
`lab rm-accuracy`) share: the policy whose samples are labelled, the reward-model backbone, the
simulated annotator's noise, and sampling from the policy. One definition, so that "the lab
defaults" mean the same data in every experiment."""

from __future__ import annotations

from dataclasses import dataclass

from alignlab.config import field


@dataclass
class LabDataConfig:
    policy: str = field("embedded", "policy whose samples are labelled, scored and selected")
    rm_model: str = field("embedded-encoder", "reward-model backbone")
    output: str = field("", "output folder (default runs/<experiment>-<time>)")
    seed: int = field(0, "seed for prompts, sampling, labels, folds (rm-accuracy) and training")
    max_new_tokens: int = field(40, "max tokens per sampled response")
    generation_batch: int = field(64, "rows per generate call")
    annotator_temperature: float = field(0.15, "Bradley-Terry temperature of the simulated annotator")
    label_flip: float = field(0.1, "probability that the annotator's choice is flipped")


def sample_texts(model, tokenizer, prompts, n: int, cfg: LabDataConfig, seed: int, desc: str):
    """n responses per prompt at temperature 1 (the base policy's own distribution)."""
    from alignlab.rollout.base import SamplingParams
    from alignlab.rollout.hf import generate_texts

    params = SamplingParams(n=n, temperature=1.0, max_new_tokens=cfg.max_new_tokens, seed=seed)
    return generate_texts(model, tokenizer, prompts, params, batch_size=cfg.generation_batch, progress=desc)


def lab_annotator(task, cfg: LabDataConfig):
    """The noisy Bradley-Terry annotator driven by the task's gold reward."""
    from alignlab.lab.annotators import BradleyTerryAnnotator

    return BradleyTerryAnnotator(task.gold_reward, temperature=cfg.annotator_temperature, flip_prob=cfg.label_flip,
                                 seed=cfg.seed)


def lab_output(cfg: LabDataConfig, experiment: str):
    """The experiment's output folder (created): `output`, or runs/<experiment>-<time>."""
    import time
    from pathlib import Path

    out = Path(cfg.output or f"runs/{experiment}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    return out
