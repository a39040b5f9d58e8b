"""Settings every trainer shares. An algorithm's config subclasses `TrainConfig`."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from alignlab.config import ConfigError, field
from alignlab.data.pairing import PAIRINGS

SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")
TRUNCATION = ("error", "truncate", "drop")
REPORT_SINKS = ("tensorboard", "wandb")
# The package each metric sink imports, and how to install it.
SINK_PACKAGES = {"tensorboard": ("tensorboard", "pip install alignlab[tensorboard]"),
                 "wandb": ("wandb", "pip install alignlab[wandb]")}


@dataclass
class TrainConfig:
    model: str = field("embedded", "policy: 'embedded' (SmolLM2-135M-Instruct), a local HF folder, or a hub id (online only)")
    train_data: str = field("", "training data file (jsonl/json/parquet) or saved `datasets` folder")
    eval_data: str = field("", "held-out data; if empty, `eval_fraction` of the training data is held out")
    eval_fraction: float = field(0.0, "share of the training records held out for evaluation when no eval_data is given")
    data_format: str = field("auto", "data format, or 'auto' to detect it (see docs/data.md)")
    columns: dict = field({}, "map of alignlab field -> your column name, e.g. {prompt: question}")
    pairing: str = field("best_vs_worst", "rule turning rated/ranked responses into pairs: best_vs_worst | best_vs_random")
    skip_invalid: bool = field(False, "skip and count invalid rows (written to rejects.jsonl in the run folder) instead of failing")
    max_length: int = field(1024, "max tokens of prompt + response")
    max_prompt_length: int = field(0, "max prompt tokens when truncating (0: whatever leaves room for the response)")
    truncation: str = field("error", "over-long examples: error | truncate (keep prompt end, response start) | drop")
    output_dir: str = field("", "run folder (default runs/<algorithm>-<time>)")
    seed: int = field(0, "seed for data order, initialization and sampling")
    epochs: float = field(1.0, "passes over the training data")
    max_steps: int = field(0, "stop after this many optimizer steps (0: run all epochs)")
    batch_size: int = field(4, "examples per micro-batch per device")
    grad_accum: int = field(1, "micro-batches per optimizer step")
    learning_rate: float = field(1e-6, "peak learning rate (LoRA usually wants 10-100x more)")
    weight_decay: float = field(0.0, "AdamW weight decay")
    adam_betas: list = field([0.9, 0.999], "AdamW betas")
    lr_schedule: str = field("cosine", "cosine | linear | constant (all after warmup)")
    warmup_ratio: float = field(0.1, "share of steps spent warming the learning rate up from 0")
    max_grad_norm: float = field(1.0, "gradient clipping norm (0: off)")
    precision: str = field("fp32", "fp32 | bf16 | fp16 autocast")
    gradient_checkpointing: bool = field(False, "trade compute for memory (off by default: about 20% slower for small models)")
    lora: bool = field(False, "train a LoRA adapter instead of all weights")
    lora_r: int = field(16, "LoRA rank")
    lora_alpha: int = field(32, "LoRA alpha")
    lora_dropout: float = field(0.0, "LoRA dropout")
    lora_target_modules: list = field(["all-linear"], "modules LoRA adapts ('all-linear' or names like q_proj,v_proj)")
    lora_layers: int = field(0, "LoRA only on the top N transformer layers (0: every layer); LoRA reward ensembles then run the bottom layers once for all members")
    merge_lora: bool = field(False, "save the final model with the adapter merged into the weights")
    eval_every: int = field(0, "evaluate every N optimizer steps (0: only at the end)")
    save_every: int = field(0, "checkpoint every N optimizer steps (0: only at the end)")
    keep_checkpoints: int = field(2, "how many recent checkpoints to keep")
    log_every: int = field(1, "log metrics every N optimizer steps")
    report_to: list = field([], "extra metric sinks: tensorboard, wandb")
    resume: str = field("", "'latest' (newest checkpoint in output_dir) or a checkpoint folder; settings that would change the training must match the run's (docs/runs.md)")
    overwrite: bool = field(False, "start a new run in an output_dir that holds one, after moving the old run aside to a sibling folder NAME.old-<time>")
    max_bad_steps: int = field(3, "abort after this many optimizer steps in a row with non-finite gradients")
    progress: bool = field(True, "show a progress bar")

    def validate(self) -> None:
        checks = [
            (self.lr_schedule in SCHEDULES, f"lr_schedule must be one of {SCHEDULES}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.truncation in TRUNCATION, f"truncation must be one of {TRUNCATION}"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
            (0.0 <= self.eval_fraction < 1.0, "eval_fraction must be in [0, 1)"),
            (0.0 <= self.warmup_ratio < 1.0, "warmup_ratio must be in [0, 1)"),
            (self.epochs > 0 or self.max_steps > 0, "epochs or max_steps must be positive"),
            (self.max_length > 0, "max_length must be positive"),
            (self.lora_layers >= 0, "lora_layers must be >= 0 (0: every layer)"),
            (self.pairing in PAIRINGS, f"pairing must be one of {PAIRINGS}"),
            (self.epochs >= 0 and self.max_steps >= 0, "epochs and max_steps must be >= 0"),
            (0 <= self.max_prompt_length < self.max_length, "max_prompt_length must be >= 0 and < max_length"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (len(self.adam_betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in self.adam_betas),
             f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}"),
            (self.max_grad_norm >= 0, "max_grad_norm must be >= 0 (0: off)"),
            (self.lora_r >= 1 and self.lora_alpha > 0, "lora_r must be >= 1 and lora_alpha > 0"),
            (0 <= self.lora_dropout < 1, "lora_dropout must be in [0, 1)"),
            (self.eval_every >= 0 and self.save_every >= 0, "eval_every and save_every must be >= 0 (0: only at the end)"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (self.max_bad_steps >= 1, "max_bad_steps must be >= 1"),
            (set(self.report_to) <= set(REPORT_SINKS), f"report_to takes {', '.join(REPORT_SINKS)}; got {self.report_to}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def preflight(self, default_dir: str = "runs") -> None:
        """Check the settings against this machine before anything loads or is written: the run
        folder can be created and written to, and every `report_to` sink's package is installed."""
        check_output_dir(self.output_dir or default_dir)
        for sink in self.report_to:
            package, install = SINK_PACKAGES[sink]
            if importlib.util.find_spec(package) is None:
                raise ConfigError(f"report_to {sink} needs the {package} package: {install}")


def check_output_dir(output_dir: str) -> None:
    """ConfigError (one line) if `output_dir` is a file or cannot be created and written in."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output_dir {path} is a file, not a folder: choose another --output-dir")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output_dir {path}: {existing} is a file, not a folder: choose another --output-dir")
    try:  # a real write, not os.access: it also catches read-only filesystems and root's view of modes
        handle, probe = tempfile.mkstemp(prefix=".alignlab-write-test-", dir=existing)
        os.close(handle)
        os.remove(probe)
    except OSError as exc:
        raise ConfigError(f"output_dir {path}: cannot write in {existing} ({exc.strerror or exc}): "
                          "choose a writable --output-dir") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
