"""bench/gpu_check.sh, prepared for a GPU machine, is checked here without one: the shell script
parses (`bash -n`) and names only configs that exist, and its Python part runs end to end on a tiny
model on the CPU, reporting throughput, step time and MFU (and a skip reason for a missing backend)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_gpu_check_script_parses_and_names_shipped_configs():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = SCRIPT.read_text()
    loop = re.search(r"for config in ([\w ]+); do", text).group(1).split()
    assert loop == ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"]
    for name in loop:
        assert (ROOT / "configs" / "accelerate" / f"{name}.yaml").is_file(), name


def run_check(tmp_path, policy_dir, backend: str) -> dict:
    out = tmp_path / f"{backend}.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--backend", backend, "--model",
                           str(policy_dir), "--device", "cpu", "--prompts", "2", "--samples", "2",
                           "--max-new-tokens", "4", "--iterations", "1", "--precision", "fp32", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == report
    return report


def test_the_gpu_check_measures_grpo_on_a_tiny_model(tmp_path, tiny_policy_dir):
    report = run_check(tmp_path, tiny_policy_dir, "hf")
    gen, grpo = report["generation"], report["grpo"]
    assert gen["generated_tokens"] > 0 and gen["tokens_per_s"] == pytest.approx(gen["generated_tokens"] / gen["seconds"])
    assert 0 < gen["mfu"] < 1
    assert grpo["iterations"] == 1 and grpo["completions"] == 4 and grpo["steps"] >= 1
    assert grpo["trained_tokens"] > 0 and 0 < grpo["train_mfu"] < 1 and grpo["step_seconds"] > 0


def test_the_gpu_check_says_why_a_backend_is_skipped(tmp_path, tiny_policy_dir):
    report = run_check(tmp_path, tiny_policy_dir, "vllm")
    assert "vllm" in report["skipped"].lower() and "generation" not in report
