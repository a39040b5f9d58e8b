"""The lab's place in the package: components in alignlab.lab, experiment drivers in
alignlab.experiments (not importing each other), and rewards/ resolving `lab:` names through a
registry that the lab fills, without importing it."""

import ast
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

import alignlab
from alignlab.cli import main
from alignlab.experiments.bon_overoptimization import BoNOveroptConfig
from alignlab.experiments.demo import DemoConfig
from alignlab.experiments.overoptimization import OveroptConfig
from alignlab.experiments.rm_accuracy import RMAccuracyConfig
from alignlab.rewards import spec
from alignlab.rewards.spec import build_reward_source, register_reward_family

PACKAGE = Path(alignlab.__file__).parent
DRIVERS = ("bon_overoptimization", "overoptimization", "rm_accuracy", "demo", "nash_bandit")


def _imported(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_rewards_never_import_the_lab_nor_the_lab_its_experiments():
    for path in (PACKAGE / "rewards").glob("*.py"):
        assert not [m for m in _imported(path) if m.startswith("alignlab.lab")], path.name
    for path in (PACKAGE / "lab").glob("*.py"):
        assert not [m for m in _imported(path) if m.startswith("alignlab.experiments")], path.name


def test_experiment_drivers_do_not_import_each_other():
    for name in DRIVERS:
        others = {f"alignlab.experiments.{d}" for d in DRIVERS if d != name}
        assert not _imported(PACKAGE / "experiments" / f"{name}.py") & others, name
    assert not (PACKAGE / "demo.py").exists()
    assert not [p.name for p in (PACKAGE / "lab").glob("*.py") if any(d in p.stem for d in ("overopt", "accuracy", "sampling"))]


def test_experiment_configs_do_not_inherit_each_other():
    configs = (BoNOveroptConfig, OveroptConfig, RMAccuracyConfig, DemoConfig)
    for cls in configs:
        assert not [other for other in configs if other is not cls and issubclass(cls, other)], cls.__name__
    # the overoptimization run samples no Best-of-N candidates: it has no `samples` to set
    assert "samples" in {f.name for f in fields(BoNOveroptConfig)}
    assert "samples" not in {f.name for f in fields(OveroptConfig)}


def test_overoptimization_refuses_a_setting_it_does_not_read(capsys):
    assert main(["lab", "overoptimization", "--samples", "8"]) == 2
    assert "samples" in capsys.readouterr().err


_FRESH = """
import importlib, pkgutil, sys
import alignlab.rewards
for m in pkgutil.iter_modules(alignlab.rewards.__path__):
    importlib.import_module(f"alignlab.rewards.{m.name}")
lab = sorted(m for m in sys.modules if m.startswith("alignlab.lab"))
assert not lab, lab
from alignlab.rewards.spec import build_rewards, build_reward_source
try:
    build_reward_source("lab:sentiment")
except ValueError as exc:
    assert "lab:TASK once alignlab.lab is imported" in str(exc), exc
else:
    raise AssertionError("lab: resolved before the lab registered it")
import alignlab.train.online  # the online trainer's path: it imports the lab, which registers lab:
rewards = build_rewards(["lab:sentiment", "lab:length"])
print(rewards.score(["p", "p"], ["What a wonderful, lovely day!", "A terrible, awful, hateful day."]).tolist())
try:
    build_reward_source("lab:maths")
except ValueError as exc:
    print(exc)
"""


def test_rewards_import_without_the_lab_and_lab_rewards_resolve_from_the_online_trainer():
    done = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    scores, error = done.stdout.strip().splitlines()[-2:]
    good, bad = eval(scores)  # sentiment + length: the positive sentence scores higher
    assert good > bad
    assert error == ("reward 'lab:maths': unknown lab task 'maths'; the lab tasks are: sentiment, arithmetic, length")


def test_a_reward_family_is_registered_once(monkeypatch):
    monkeypatch.setattr(spec, "REWARD_FAMILIES", dict(spec.REWARD_FAMILIES))  # leave the real registry as it was

    def factory(name, answers):
        return None

    with pytest.raises(ValueError, match="'rm' is built in"):
        register_reward_family("rm", factory)
    with pytest.raises(ValueError, match="'lab' is already registered"):
        register_reward_family("lab", factory)
    register_reward_family("test-family", factory)
    register_reward_family("test-family", factory)  # the same factory again (a re-import): fine
    assert build_reward_source("test-family:x") is None
    with pytest.raises(ValueError, match="unknown reward source 'nope:x'; use lab:NAME, test-family:NAME, math"):
        build_reward_source("nope:x")
