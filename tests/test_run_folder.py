"""The run folder never loses or mixes work: an existing run is refused unless resumed or moved
aside, a folder in use is locked, a resume keeps the run's trajectory, and Ctrl-C saves a
checkpoint and says how to resume (issue 24, items 1-4)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from alignlab.train.config import TrainConfig
from alignlab.train.dpo import DPOConfig, train_dpo
from alignlab.train.loop import TrainingInterrupted, train_loop
from alignlab.train.run import RunFolderError, make_run_dir, release_run
from test_dpo_train import TOPICS
from test_loop import ToyAlgorithm, ToyModel, _cfg, _losses

ROOT = Path(__file__).resolve().parents[1]


def write_pairs(path, topics, suffix=""):
    rows = [{"prompt": f"Tell me about {t}.", "chosen": f"I love {t}, yes yes.{suffix}", "rejected": f"No. {t} no no."}
            for t in topics]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dpo_cfg(tmp_path, model_dir, **kw):
    base = dict(model=str(model_dir), train_data=str(tmp_path / "pairs.jsonl"), output_dir=str(tmp_path / "run"),
                batch_size=4, max_steps=2, learning_rate=3e-3, warmup_ratio=0.0, beta=0.5, progress=False,
                max_length=128, lr_schedule="constant")
    base.update(kw)
    return DPOConfig(**base)


@pytest.fixture()
def pairs(tmp_path):
    return write_pairs(tmp_path / "pairs.jsonl", TOPICS[:8])


def test_a_finished_run_is_refused_and_overwrite_moves_it_aside(tmp_path, tiny_policy_dir, pairs):
    first = train_dpo(dpo_cfg(tmp_path, tiny_policy_dir))
    run = first.run_dir
    metrics = (run / "metrics.jsonl").read_text()
    weights = load_file(run / "final" / "model.safetensors")
    with pytest.raises(RunFolderError, match=r"already holds a run \(dpo, started .*finished\).*--resume latest.*"
                                             r"another --output-dir.*--overwrite"):
        train_dpo(dpo_cfg(tmp_path, tiny_policy_dir, learning_rate=1e-2))
    assert (run / "metrics.jsonl").read_text() == metrics  # nothing appended, nothing replaced
    second = train_dpo(dpo_cfg(tmp_path, tiny_policy_dir, learning_rate=1e-2, overwrite=True))
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "metrics.jsonl").read_text() == metrics
    moved = load_file(aside[0] / "final" / "model.safetensors")
    assert all(torch.equal(moved[k], weights[k]) for k in weights)
    rows = [json.loads(line) for line in (second.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]  # the new run's lines only


def test_the_command_line_refuses_in_one_line_before_loading_anything(tmp_path, tiny_policy_dir, pairs, capsys):
    from alignlab.cli import main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n')  # a run that never checkpointed
    argv = ["train", "dpo", "--model", "/nonexistent/model", "--train-data", str(pairs), "--output-dir", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a run (unknown algorithm, no checkpoint)" in err
    assert main(argv + ["--resume", "latest"]) == 2
    assert "has no checkpoint yet" in capsys.readouterr().err
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert main(argv + ["--dry-run"]) == 2  # a dry run says what the run would meet, and moves nothing
    assert "already holds a run" in capsys.readouterr().err
    assert main(argv + ["--dry-run", "--overwrite"]) != 0  # gets past the folder check (then the model is missing)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_default_folders_of_runs_started_in_the_same_second_differ(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20250101-120000")
    a = make_run_dir(TrainConfig(), "dpo")
    b = make_run_dir(TrainConfig(), "dpo")
    assert a != b and a.name == "dpo-20250101-120000" and b.name == "dpo-20250101-120000-2"
    release_run(a), release_run(b)


def test_a_folder_in_use_is_locked_until_its_process_dies(tmp_path):
    holder = textwrap.dedent("""
        import sys, time
        from alignlab.train.config import TrainConfig
        from alignlab.train.run import make_run_dir
        make_run_dir(TrainConfig(output_dir=sys.argv[1]), "dpo")
        print("locked", flush=True)
        time.sleep(120)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=rf"run is in use by another alignlab run \(pid {proc.pid} on "):
            make_run_dir(TrainConfig(output_dir=str(tmp_path / "run")), "dpo")
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: the OS releases the lock, no stale marker
        proc.wait()
    path = make_run_dir(TrainConfig(output_dir=str(tmp_path / "run")), "dpo")
    release_run(path)


def test_resume_refuses_settings_and_data_that_change_training_and_records_allowed_ones(tmp_path, tiny_policy_dir, pairs):
    train_dpo(dpo_cfg(tmp_path, tiny_policy_dir))
    with pytest.raises(RunFolderError, match=r"training: learning_rate 0.003 -> 0.01; beta 0.5 -> 0.2\. "):
        train_dpo(dpo_cfg(tmp_path, tiny_policy_dir, beta=0.2, learning_rate=1e-2, resume="latest"))
    with pytest.raises(RunFolderError, match="a resume may only raise it"):
        train_dpo(dpo_cfg(tmp_path, tiny_policy_dir, max_steps=1, resume="latest"))
    write_pairs(pairs, TOPICS[:8], suffix="!")  # same path, other content
    with pytest.raises(RunFolderError, match=r"train_data .*pairs.jsonl: its content changed since the run started"):
        train_dpo(dpo_cfg(tmp_path, tiny_policy_dir, resume="latest"))
    write_pairs(pairs, TOPICS[:8])
    moved = tmp_path / "moved.jsonl"
    moved.write_bytes(pairs.read_bytes())  # same content elsewhere: the same data
    config_before = (tmp_path / "run" / "config.yaml").read_text()
    session = train_dpo(dpo_cfg(tmp_path, tiny_policy_dir, max_steps=4, log_every=2, train_data=str(moved),
                                resume="latest"))
    assert session.state.step == 4
    manifest = json.loads((session.run_dir / "manifest.json").read_text())
    (entry,) = manifest["resumed"]
    assert entry["changed"] == {"max_steps": [2, 4], "log_every": [1, 2], "train_data": [str(pairs), str(moved)]}
    assert entry["from"].endswith("checkpoints/step-2")
    assert "beta: 0.5" in (session.run_dir / "config.yaml").read_text() and config_before != ""


class InterruptingAlgorithm(ToyAlgorithm):
    """Interrupts at its `at`-th loss call: by a real SIGINT (Ctrl-C) or a raised KeyboardInterrupt."""

    def __init__(self, cfg, at, how):
        super().__init__(cfg)
        self.at, self.how = at, how

    def loss(self, scorer, batch):
        out = super().loss(scorer, batch)
        if self.calls == self.at:
            if self.how == "sigint":
                os.kill(os.getpid(), signal.SIGINT)  # the step finishes; the loop stops after it
            else:
                raise KeyboardInterrupt  # cuts the step short: the checkpoint is the step before
        return out


@pytest.mark.parametrize("how,saved_step", [("sigint", 3), ("raise", 2)])
def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path, how, saved_step):
    full, _ = _run_toy(_cfg(tmp_path / "full"), ToyModel(dropout=0.3))
    cfg = _cfg(tmp_path / "part")
    with pytest.raises(TrainingInterrupted) as info:
        _run_toy(cfg, ToyModel(dropout=0.3), InterruptingAlgorithm(cfg, 3, how))
    assert info.value.step == saved_step
    assert info.value.checkpoint == tmp_path / "part" / "checkpoints" / f"step-{saved_step}"
    assert (info.value.checkpoint / "state.json").is_file()
    resumed, state = _run_toy(_cfg(tmp_path / "part", resume="latest"), ToyModel(seed=5, dropout=0.3))
    assert state.step == 12
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")
    torch.testing.assert_close(resumed.linear.weight, full.linear.weight, atol=0, rtol=0)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the loop's handler is gone


def _run_toy(cfg, model, algorithm=None):
    algorithm = algorithm or ToyAlgorithm(cfg)
    return model, train_loop(cfg, algorithm, model, model, Accelerator(cpu=True), Path(cfg.output_dir))


def test_ctrl_c_on_the_command_line_exits_130_with_the_resume_command(tmp_path, tiny_policy_dir, pairs, capsys,
                                                                      monkeypatch):
    from alignlab.cli import main
    from alignlab.train.dpo import DPOAlgorithm

    loss, calls = DPOAlgorithm.loss, []

    def interrupted_loss(self, scorer, batch):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(self, scorer, batch)

    monkeypatch.setattr(DPOAlgorithm, "loss", interrupted_loss)
    argv = ["train", "dpo", "--model", str(tiny_policy_dir), "--train-data", str(pairs), "--output-dir",
            str(tmp_path / "run"), "--batch-size", "2", "--max-length", "128", "--progress", "false"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"interrupted at step 2; checkpoint saved to {tmp_path / 'run' / 'checkpoints' / 'step-2'}" in err
    assert (f"resume with: alignlab train dpo --model {tiny_policy_dir} --train-data {pairs} --batch-size 2 "
            f"--max-length 128 --progress false --output-dir {tmp_path / 'run'} --resume latest") in err
    assert not (tmp_path / "run" / "final").exists()
    monkeypatch.setattr(DPOAlgorithm, "loss", loss)
    assert main(argv[:-2] + ["--output-dir", str(tmp_path / "run"), "--resume", "latest"]) == 0
