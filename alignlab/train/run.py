"""The run folder: resolved config, reproducibility manifest, data report, final model."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from alignlab import config as config_lib

_PACKAGES = ("alignlab", "torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors")


def make_run_dir(output_dir: str, algorithm: str) -> Path:
    path = Path(output_dir or f"runs/{algorithm}-{time.strftime('%Y%m%d-%H%M%S')}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: str | Path) -> str:
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with f.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def write_run_header(run_dir: Path, cfg, algorithm: str, data_files: list[str]) -> None:
    """Save the resolved config and a manifest that says how to reproduce this run."""
    config_lib.save(cfg, run_dir / "config.yaml")
    manifest = {
        "algorithm": algorithm,
        "command": sys.argv,
        "seed": getattr(cfg, "seed", None),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": _versions(),
        "data": {f: file_sha256(f) for f in data_files if f and Path(f).exists()},
        "non_default_settings": {k: v[1] for k, v in config_lib.differences(cfg).items()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
