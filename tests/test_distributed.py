"""Data parallelism by equivalence: tiny DPO, reward-model and GRPO runs launched on 2 CPU processes
(torchrun, gloo) take the same optimizer steps as 1 process with twice the accumulation (the same
global batch), log and save once, and a 2-process checkpoint resumes on 1 process where the
2-process run went. The 2-process runs are launched once for the module (tests/dist_jobs.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignlab.train.run import RunFolderError

sys.path.insert(0, str(Path(__file__).parent))
from dist_jobs import run_job  # noqa: E402

JOBS = Path(__file__).parent / "dist_jobs.py"
ROOT = Path(__file__).resolve().parents[1]
# weights after a few steps at lr 3e-3 to 1e-2 move by ~1e-3 per step; the two runs add the same
# gradients in another order, which leaves float32 noise of ~1e-6
ATOL = 2e-5


def settings(kind: str, model_dir, out: Path, **kw) -> dict:
    base = {
        "dpo": dict(batch_size=2, learning_rate=3e-3, beta=0.5, max_length=64, max_steps=4, save_every=2,
                    keep_checkpoints=3, warmup_ratio=0.0),
        "rm": dict(batch_size=2, learning_rate=3e-3, max_length=64, max_steps=3, warmup_ratio=0.0),
        "grpo": dict(iterations=2, prompts_per_step=3, samples_per_prompt=2, max_new_tokens=6, batch_size=2,
                     learning_rate=1e-2, lr_schedule="constant", warmup_ratio=0.0, kl_coef=0.05),
        "online-dpo": dict(iterations=2, prompts_per_step=3, samples_per_prompt=1, max_new_tokens=6, batch_size=1,
                           learning_rate=1e-2, lr_schedule="constant", warmup_ratio=0.0, kl_coef=0.1, exploration="xpo",
                           exploration_coef=0.1),
    }[kind]
    return {**base, "model": str(model_dir), "output_dir": str(out), "progress": False, "seed": 0, "grad_accum": 1,
            **kw}


def launch(spec: dict, tmp: Path, processes: int = 2) -> subprocess.CompletedProcess:
    path = tmp / "spec.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                           str(JOBS), str(path)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp)


@pytest.fixture(scope="module")
def two(tmp_path_factory, tiny_policy_dir):
    """Folder with the 2-process runs dpo/, rm/, grpo/ (1 micro-batch per process per step) and the
    FSDP2 checkpoint round trip fsdp/ (dist_jobs.fsdp_checkpoint)."""
    tmp = tmp_path_factory.mktemp("two-processes")
    spec = {"jobs": [{"kind": k, "cfg": settings(k, tiny_policy_dir, tmp / k)} for k in ("dpo", "rm", "grpo", "online-dpo")]
            + [{"kind": "fsdp_checkpoint", "cfg": {"output_dir": str(tmp / "fsdp")}}]}
    proc = launch(spec, tmp)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return tmp


def weights(run: Path) -> dict:
    return {k: v for f in sorted((run / "final").glob("*.safetensors")) for k, v in load_file(f).items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=0, msg=k)


def logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["dpo", "rm", "grpo", "online-dpo"])
def test_two_processes_train_like_one_with_twice_the_accumulation(two, tmp_path, tiny_policy_dir, kind):
    one = tmp_path / kind
    run_job(kind, settings(kind, tiny_policy_dir, one, grad_accum=2))
    assert_same_weights(weights(two / kind), weights(one))
    rows2, rows1 = logged(two / kind), logged(one)
    assert [r["step"] for r in rows2] == [r["step"] for r in rows1]  # logged once, not once per process
    unit = {"grpo": "tokens_seen", "online-dpo": "pairs_seen"}.get(kind, "examples_seen")
    for a, b in zip(rows2, rows1):
        if "loss" in a:
            assert a[unit] == b[unit]  # the global batch of every step
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    manifest = json.loads((two / kind / "manifest.json").read_text())
    assert manifest["world_size"] == 2


@pytest.mark.parametrize("kind", ["grpo", "online-dpo"])
def test_processes_draw_the_samples_one_process_draws(two, tmp_path, tiny_policy_dir, kind):
    from alignlab.train.online.batch import RolloutBatch, rollout_files

    one = tmp_path / kind
    run_job(kind, settings(kind, tiny_policy_dir, one, grad_accum=2, iterations=1))
    a = RolloutBatch.load(rollout_files(two / kind / "rollouts")[0])
    b = RolloutBatch.load(rollout_files(one / "rollouts")[0])
    assert a.completion_ids == b.completion_ids and a.prompt_ids == b.prompt_ids
    names = ("old_logps", "ref_logps", "rewards", "advantages") if kind == "grpo" else ("old_logps", "ref_logps", "rewards")
    for name in names:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-5, rtol=0, msg=name)
    if kind == "online-dpo":  # the same judged pairs, the reference policy's samples included
        assert torch.equal(a.keep, b.keep) and torch.equal(a.from_reference, b.from_reference)
        assert (two / kind / "pairs" / "iter-00000.jsonl").read_text() == (one / "pairs" / "iter-00000.jsonl").read_text()


def test_a_two_process_checkpoint_resumes_on_one_process_where_two_went(two, tmp_path, tiny_policy_dir):
    run = tmp_path / "resumed"
    shutil.copytree(two / "dpo", run)
    shutil.rmtree(run / "checkpoints" / "step-4")
    shutil.rmtree(run / "final")
    (run / "summary.json").unlink()
    state = json.loads((run / "checkpoints" / "step-2" / "state.json").read_text())
    assert state["micro"] == 4  # the data position counts global micro-batches
    cfg = settings("dpo", tiny_policy_dir, run, resume="latest")
    with pytest.raises(RunFolderError, match="global batch would change"):
        run_job("dpo", cfg)  # grad_accum 1 on 1 process: half the global batch
    run_job("dpo", dict(cfg, grad_accum=2))
    assert_same_weights(weights(two / "dpo"), weights(run))
    assert [r["step"] for r in logged(run)] == [1, 2, 3, 4]


def test_the_dry_run_states_the_global_batch(tmp_path, tiny_policy_dir, monkeypatch):
    from alignlab.train.dpo import DPOConfig, train_dpo
    from dist_jobs import pairwise

    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = DPOConfig(**{k: v for k, v in settings("dpo", tiny_policy_dir, tmp_path / "dry").items()
                       if k not in ("max_steps", "save_every", "keep_checkpoints")})
    text = train_dpo(cfg, train_records=pairwise(10), dry_run=True).dry_run_text
    assert "2 per device x 1 accumulation x 2 process(es) = 4 pairs per optimizer step" in text
    assert "10 train pairs -> 5 micro-batches, 3 steps per epoch, 3 optimizer steps in all" in text


def test_an_fsdp_checkpoint_is_the_gathered_model_and_loads_sharded_or_whole(two):
    from helpers import make_tiny_lm

    from alignlab.train.checkpoint import load_checkpoint

    run = two / "fsdp"
    trained = load_file(run / "trained.safetensors")  # gathered from the 2 shards after one step
    assert len(trained) == len(dict(make_tiny_lm(64).named_parameters()))
    # loaded into a fresh sharded copy with other initial weights: the trained weights come back
    assert_same_weights(trained, load_file(run / "reloaded.safetensors"))
    # the final save (main process, after unshard) is the whole trained model, loadable as usual
    final = load_file(run / "final" / "model.safetensors")
    assert final.keys() == trained.keys()
    assert_same_weights(trained, final)
    # resumed on 1 process without FSDP: weights and AdamW moments by parameter name
    model = make_tiny_lm(64, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    state = load_checkpoint(run / "checkpoints" / "step-1", model, optimizer, scheduler)
    assert state["optimizer_layout"] == "names" and state["micro"] == 2
    assert_same_weights(trained, dict(model.named_parameters()))
    saved = torch.load(run / "checkpoints" / "step-1" / "optimizer.pt", weights_only=True)["state"]
    name, param = "model.layers.0.mlp.up_proj.weight", dict(model.named_parameters())["model.layers.0.mlp.up_proj.weight"]
    torch.testing.assert_close(optimizer.state[param]["exp_avg"], saved[name]["exp_avg"])
    assert optimizer.state[param]["exp_avg"].abs().sum() > 0
