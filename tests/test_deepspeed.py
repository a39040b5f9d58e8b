"""DeepSpeed ZeRO under alignlab's loop. Without deepspeed (CI): the mapping of alignlab's settings
into the DeepSpeed config and the one-line refusals. With deepspeed importable (skipped otherwise):
tiny DPO runs on 2 CPU processes (gloo, DeepSpeed's CPU accelerator) under ZeRO-2 and ZeRO-3 take
the steps one process takes without DeepSpeed with twice the accumulation, and their checkpoints
(whole weights, AdamW state by name) resume under DeepSpeed and without it where the run went."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from safetensors.torch import load_file

from alignlab.train.dpo import DPOConfig
from alignlab.train.session import check_engine
from alignlab.train.zero import deepspeed_settings

sys.path.insert(0, str(Path(__file__).parent))
from dist_jobs import run_job  # noqa: E402
from test_distributed import JOBS, ROOT, assert_same_weights, logged, settings, weights  # noqa: E402


def cfg(**kw) -> DPOConfig:
    return DPOConfig(**{"model": "m", "batch_size": 2, "grad_accum": 3, "max_grad_norm": 0.5, **kw})


def test_auto_entries_are_filled_from_alignlab_settings():
    ds = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
          "gradient_clipping": "auto", "zero_optimization": {"stage": 3}}
    out = deepspeed_settings(cfg(), ds, world=4)
    assert out["train_micro_batch_size_per_gpu"] == 2 and out["gradient_accumulation_steps"] == 3
    assert out["gradient_clipping"] == 0.5 and out["train_batch_size"] == 2 * 3 * 4
    # clipping off in alignlab is clipping off in DeepSpeed
    assert deepspeed_settings(cfg(max_grad_norm=0.0), {}, world=1)["gradient_clipping"] == 0.0
    # a value that agrees is kept
    assert deepspeed_settings(cfg(), {"gradient_accumulation_steps": 3}, world=1)["gradient_accumulation_steps"] == 3


@pytest.mark.parametrize("entry, value, names", [
    ("gradient_accumulation_steps", 1, "grad_accum is 3"),
    ("gradient_clipping", 1.0, "max_grad_norm is 0.5"),
    ("train_micro_batch_size_per_gpu", 8, "batch_size is 2"),
    ("train_batch_size", 12, "batch_size x grad_accum x 1 process(es) is 6"),
])
def test_an_entry_that_disagrees_is_refused_in_one_line(entry, value, names):
    expected = re.escape(f"DeepSpeed config: {entry} is {value} but alignlab's {names}")
    with pytest.raises(ValueError, match="^" + expected) as err:
        deepspeed_settings(cfg(), {entry: value}, world=1)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("ds, precision, message", [
    ({"optimizer": {"type": "Adam"}}, "fp32", "remove its 'optimizer' section"),
    ({"scheduler": {"type": "WarmupLR"}}, "fp32", "remove its 'scheduler' section"),
    ({"fp16": {"enabled": True}}, "fp32", "fp16 is enabled"),
    ({"bf16": {"enabled": True}}, "fp32", "bf16.enabled is True but alignlab's precision is fp32"),
    ({}, "fp16", "precision fp16 is not supported under DeepSpeed"),
])
def test_what_alignlab_owns_is_refused_in_the_deepspeed_config(ds, precision, message):
    with pytest.raises(ValueError, match=message):
        deepspeed_settings(cfg(precision=precision), ds, world=1)


def test_the_trainer_checks_the_deepspeed_config_at_start():
    """check_engine (start_training) takes accelerate's DeepSpeed plugin config: fills it, or refuses."""
    from accelerate.utils import DistributedType

    ds = {"gradient_accumulation_steps": "auto", "zero_optimization": {"stage": 2}}
    accelerator = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, print=lambda *a: None,
                                  state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=ds)))
    check_engine(accelerator, cfg())
    assert ds["gradient_accumulation_steps"] == 3 and ds["gradient_clipping"] == 0.5
    ds.update(gradient_accumulation_steps=1)
    with pytest.raises(ValueError, match="gradient_accumulation_steps is 1 but alignlab's grad_accum is 3"):
        check_engine(accelerator, cfg())


@pytest.mark.parametrize("stage", [2, 3])
def test_the_shipped_configs_leave_accumulation_and_clipping_to_alignlab(stage):
    config = yaml.safe_load((ROOT / "configs" / "accelerate" / f"deepspeed_zero{stage}.yaml").read_text())
    assert config["distributed_type"] == "DEEPSPEED" and config["deepspeed_config"]["zero_stage"] == stage
    assert not {"gradient_accumulation_steps", "gradient_clipping"} & set(config["deepspeed_config"])


def test_a_checkpoint_by_position_is_refused_under_deepspeed(tmp_path):
    """A checkpoint written without FSDP or DeepSpeed keeps AdamW state by position, which a ZeRO
    optimizer cannot take: one line, before DeepSpeed is set up."""
    import torch

    from alignlab.train.checkpoint import CheckpointError, read_named_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    path = save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {"micro": 1}, keep=0)
    with pytest.raises(CheckpointError, match="written without FSDP or DeepSpeed .* resume it without DeepSpeed"):
        read_named_checkpoint(path, model, engine="DeepSpeed")


# ---- real DeepSpeed engines on 2 CPU processes ----

needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed is not installed (not an alignlab dependency); these runs go "
                                            "through DeepSpeed's CPU accelerator on 2 gloo processes")


def launch_deepspeed(spec: dict, tmp: Path, stage: int) -> None:
    path = tmp / f"spec-{stage}.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(stage)}
    env.setdefault("DS_ACCELERATOR", "cpu")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(JOBS), str(path)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-6000:]


def resumable_copy(run: Path, to: Path) -> Path:
    """`run` as it was at its step-2 checkpoint."""
    shutil.copytree(run, to)
    shutil.rmtree(to / "checkpoints" / "step-4")
    shutil.rmtree(to / "final")
    (to / "summary.json").unlink()
    return to


LORA = dict(lora=True, lora_r=4, reference="adapter_disabled", learning_rate=1e-2)


@pytest.fixture(scope="module")
def zero(tmp_path_factory, tiny_policy_dir):
    """zero2/ and zero3/: 4-step DPO runs on 2 processes; resumed3/: zero2's step-2 checkpoint
    resumed under ZeRO-3; lora3/: LoRA DPO under ZeRO-3, the reference being the adapter disabled."""
    tmp = tmp_path_factory.mktemp("deepspeed")
    launch_deepspeed({"jobs": [{"kind": "dpo", "cfg": settings("dpo", tiny_policy_dir, tmp / "zero2")}]}, tmp, 2)
    resumable_copy(tmp / "zero2", tmp / "resumed3")
    launch_deepspeed({"jobs": [{"kind": "dpo", "cfg": settings("dpo", tiny_policy_dir, tmp / "zero3")},
                               {"kind": "dpo", "cfg": settings("dpo", tiny_policy_dir, tmp / "resumed3",
                                                               resume="latest")},
                               {"kind": "dpo", "cfg": settings("dpo", tiny_policy_dir, tmp / "lora3", **LORA)}]},
                     tmp, 3)
    return tmp


@needs_deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_trains_like_one_process_with_twice_the_accumulation(zero, tmp_path, tiny_policy_dir, stage):
    one = tmp_path / "one"
    run_job("dpo", settings("dpo", tiny_policy_dir, one, grad_accum=2))
    run = zero / f"zero{stage}"
    # the final model is whole (gathered from the ZeRO-3 shards) and the same weights
    assert_same_weights(weights(run), weights(one))
    rows_ds, rows_one = logged(run), logged(one)
    assert [r["step"] for r in rows_ds] == [r["step"] for r in rows_one]
    for a, b in zip(rows_ds, rows_one):
        if "loss" in a:  # the same loss, gradient norm before clipping (clipped at 1.0) and schedule
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
            assert a["lr"] == pytest.approx(b["lr"], abs=1e-9)
    assert max(r["grad_norm"] for r in rows_one if "grad_norm" in r) > 1.0  # clipping was exercised


@needs_deepspeed
def test_a_deepspeed_checkpoint_resumes_under_deepspeed_and_without_it(zero, tmp_path, tiny_policy_dir):
    state = json.loads((zero / "zero3" / "checkpoints" / "step-2" / "state.json").read_text())
    assert state["optimizer_layout"] == "names"
    # a ZeRO-2 checkpoint resumed under ZeRO-3 on 2 processes goes where the ZeRO-2 run went
    assert_same_weights(weights(zero / "resumed3"), weights(zero / "zero2"))
    assert [r["step"] for r in logged(zero / "resumed3")] == [1, 2, 3, 4]
    # a ZeRO-3 checkpoint resumed on 1 process without DeepSpeed (the same global batch)
    run = resumable_copy(zero / "zero3", tmp_path / "plain")
    run_job("dpo", settings("dpo", tiny_policy_dir, run, resume="latest", grad_accum=2))
    assert_same_weights(weights(run), weights(zero / "zero3"))


@needs_deepspeed
def test_a_lora_adapter_trains_under_zero3_like_one_process(zero, tmp_path, tiny_policy_dir):
    """ZeRO-3 also shards the frozen base weights; the reference pass runs with the adapter off."""
    one = tmp_path / "one"
    run_job("dpo", settings("dpo", tiny_policy_dir, one, grad_accum=2, **LORA))
    adapter = load_file(zero / "lora3" / "final" / "adapter_model.safetensors")
    assert adapter and not (zero / "lora3" / "final" / "model.safetensors").exists()
    assert_same_weights(adapter, load_file(one / "final" / "adapter_model.safetensors"))
    for a, b in zip(logged(zero / "lora3"), logged(one)):
        assert a.get("loss") == pytest.approx(b.get("loss"), abs=1e-5)
