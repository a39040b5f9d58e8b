"""What the lab's reward-model experiments (`lab bon-overoptimization`, `lab overoptimization`,
`lab rm-accuracy`) share: the policy whose samples are labelled, the reward-model backbone, the
simulated annotator's noise, sampling from the policy, and the files of sampled responses. One
definition, so that "the lab defaults" mean the same data in every experiment."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.config import field
from alignlab.data.errors import DataError
from alignlab.data.prompts import json_objects, prompt_row
from alignlab.lab.annotators import BradleyTerryAnnotator
from alignlab.models.load import reference_context
from alignlab.models.logprobs import sequence_logps
from alignlab.models.packing import pack_sequences
from alignlab.rollout.base import SamplingParams
from alignlab.rollout.hf import generate_texts


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
    params = SamplingParams(n=n, temperature=1.0, max_new_tokens=cfg.max_new_tokens, seed=seed)
    return generate_texts(model, tokenizer, prompts, params, batch_size=cfg.generation_batch, progress=desc)


def sampled_kl(model, prompt_ids, completion_ids) -> torch.Tensor:
    """Per-sample log π(y|x) − log π_ref(y|x) (π_ref: adapter disabled), summed over tokens: on
    the policy's own samples, a Monte-Carlo estimate of KL(π || π_ref) per sequence."""
    out = []
    with torch.no_grad():
        for start in range(0, len(prompt_ids), 32):
            rows = range(start, min(start + 32, len(prompt_ids)))
            blocks = [(prompt_ids[i], [(completion_ids[i], k)]) for k, i in enumerate(rows)]
            batch = pack_sequences(blocks, len(blocks), pad_token_id=0)
            policy = sequence_logps(model, batch)
            with reference_context(model):
                reference = sequence_logps(model, batch)
            out.append(policy - reference)
    return torch.cat(out)


def lab_annotator(task, cfg: LabDataConfig) -> BradleyTerryAnnotator:
    """The noisy Bradley-Terry annotator driven by the task's gold reward."""
    return BradleyTerryAnnotator(task.gold_reward, temperature=cfg.annotator_temperature, flip_prob=cfg.label_flip,
                                 seed=cfg.seed)


def lab_output(cfg: LabDataConfig, experiment: str) -> Path:
    """The experiment's output folder (created): `output`, or runs/<experiment>-<time>."""
    out = Path(cfg.output or f"runs/{experiment}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    return out


def read_response_groups(path) -> tuple[list, list[list[str]]]:
    """(prompts, responses per prompt) from a JSON Lines file of {prompt, response} rows (every row
    kept, repeats included: they are samples) or of {prompt, chosen, rejected} pairs (each distinct
    response once). Prompts are text or chat message lists, in order of first appearance. Bad rows
    are a DataError naming the file, line and field."""
    path = Path(path)
    prompts, groups, index = [], [], {}
    for row, where in json_objects(path, path.read_text(encoding="utf-8").splitlines(), "with a prompt"):
        prompt = prompt_row(row, where)["prompt"]
        key = json.dumps(prompt, sort_keys=True)
        if key not in index:
            index[key] = len(prompts)
            prompts.append(prompt)
            groups.append([])
        group = groups[index[key]]
        fields = ("response",) if "response" in row else ("chosen", "rejected")
        for name in fields:
            text = row.get(name)
            if not isinstance(text, str):
                raise DataError("expected a string (a row needs `response`, or `chosen` and `rejected`)",
                                field=name, **where)
            if name == "response" or text not in group:
                group.append(text)
    if not prompts:
        raise DataError("no rows", file=str(path))
    return prompts, groups


def write_response_groups(path, prompts: list, groups: list[list[str]]) -> None:
    """{prompt, response} JSON Lines, prompt by prompt, in each group's order: what
    `read_response_groups` reads back."""
    with Path(path).open("w", encoding="utf-8") as f:
        for prompt, group in zip(prompts, groups):
            for text in group:
                f.write(json.dumps({"prompt": prompt, "response": text}, ensure_ascii=False) + "\n")
