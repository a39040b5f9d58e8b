"""Nothing in a run folder is unpickled: a planted malicious pickle in any file alignlab reads back
(checkpoint optimizer/scheduler/RNG/state, reference log-probs, rollouts) runs no code and gives a
clear error (issue 24 item 5)."""

import re
from pathlib import Path

import pytest
import torch

from alignlab.train.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from test_loop import ToyModel, _cfg, _run

PACKAGE = Path(__file__).resolve().parents[1] / "alignlab"


class Planted:
    """Unpickling this creates `marker`: the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path) -> None:
    torch.save({"state": Planted(marker)}, path)


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng.safetensors", "rng.json", "state.json",
                                  "trainable.safetensors"])
def test_a_planted_pickle_in_a_checkpoint_runs_nothing(tmp_path, name):
    _run(_cfg(tmp_path / "run", epochs=1.0))
    checkpoint = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    marker = tmp_path / "code-ran"
    plant(checkpoint / name, marker)
    model = ToyModel()
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    with pytest.raises(CheckpointError, match=rf"checkpoint file {re.escape(str(checkpoint / name))} cannot be read safely"):
        load_checkpoint(checkpoint, model, optimizer, scheduler)
    assert not marker.exists()


def test_a_planted_reference_cache_runs_nothing(tmp_path):
    from alignlab.train.dpo import DPOConfig
    from alignlab.train.dpo_data import cached_reference
    from alignlab.train.session import TrainingSession

    marker = tmp_path / "code-ran"
    plant(tmp_path / "reference_logps.safetensors", marker)
    session = TrainingSession(DPOConfig(), "dpo", tmp_path)
    with pytest.raises(ValueError, match="reference_logps.safetensors is not a valid reference log-prob cache"):
        cached_reference(session, lambda pairs: torch.zeros(len(pairs), 2))
    assert not marker.exists()


def test_a_planted_rollout_runs_nothing_and_real_ones_round_trip(tmp_path):
    from alignlab.train.online.batch import RolloutBatch, pad_tokens, rollout_path

    batch = RolloutBatch(3, 2, ["hi", [{"role": "user", "content": "yo"}]], [[5, 6], [7]], [[8, 9, 10], [11]],
                         ["a", "b"], [True, False], mask=pad_tokens([[1.0] * 3, [1.0]]), old_logps=torch.randn(2, 3),
                         rewards=torch.tensor([0.25, -1.0]), keep=torch.tensor([True, False]),
                         metrics={"reward/mean": 0.125}, controller={"kl_coef": 0.05, "lagrange": 0.0})
    path = rollout_path(tmp_path, 3)
    batch.save(path)
    back = RolloutBatch.load(path)
    for k, v in batch.__dict__.items():
        assert torch.equal(v, back.__dict__[k]) if isinstance(v, torch.Tensor) else v == back.__dict__[k], k
    marker = tmp_path / "code-ran"
    plant(path, marker)
    with pytest.raises(ValueError, match=f"rollout file {re.escape(str(path))} cannot be read safely"):
        RolloutBatch.load(path)
    assert not marker.exists()


def test_the_package_loads_nothing_with_pickle():
    unsafe = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(|allow_pickle\s*=\s*True|torch\.load\((?![^)]*weights_only=True)")
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if unsafe.search(line)]
    assert found == []
