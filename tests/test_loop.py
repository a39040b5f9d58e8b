"""Plumbing of the one loop, by equivalence: accumulation vs one big batch, resume vs one run,
and the NaN/inf guards. A linear model keeps these exact and fast."""

import json
import shutil

import pytest
import torch
from accelerate import Accelerator

from alignlab.train.config import TrainConfig
from alignlab.train.loop import TrainingAborted, train_loop


class ToyModel(torch.nn.Module):
    def __init__(self, seed=0, dropout=0.0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = torch.nn.Linear(3, 1)
        self.dropout = torch.nn.Dropout(dropout)  # > 0 exercises the RNG restore on resume

    def forward(self, x):
        return self.linear(self.dropout(x)).squeeze(-1)


class ToyAlgorithm:
    """Per-example squared error on a fixed regression set, shuffled per epoch by seed."""

    progress_keys = ("abs_error",)

    def __init__(self, cfg, n=11, poison=None):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
        self.cfg, self.poison = cfg, poison or {}

    def micro_batches(self, epoch):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(1000 + epoch))
        return [order[i : i + self.cfg.batch_size] for i in range(0, len(order), self.cfg.batch_size)]

    def examples_in(self, batch):
        return len(batch)

    def loss(self, scorer, batch):
        err = scorer(self.x[batch]) - self.y[batch]
        per_example = err**2
        self.calls = getattr(self, "calls", 0) + 1  # one micro-batch per step in these tests
        if self.calls in self.poison.get("loss", ()):
            per_example = per_example * float("nan")
        if self.calls in self.poison.get("grad", ()):
            per_example = per_example + _nan_grad(scorer)
        return per_example, {"abs_error": err.abs().mean().detach()}

    def evaluate(self, scorer):
        return {"mse": float(((scorer(self.x) - self.y) ** 2).mean())}


def _nan_grad(model):
    """A term whose value is 0 but whose gradient is NaN: sqrt(0) has an infinite derivative,
    times 0 gives NaN — the case of a finite loss with non-finite gradients."""
    return torch.sqrt(model.linear.bias.sum() * 0.0) * 0.0


def _cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), batch_size=2, grad_accum=1, epochs=2.0, learning_rate=0.05,
                lr_schedule="cosine", warmup_ratio=0.2, progress=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _run(cfg, model=None, algorithm=None):
    model = model or ToyModel()
    algorithm = algorithm or ToyAlgorithm(cfg)
    from pathlib import Path

    state = train_loop(cfg, algorithm, model, model, Accelerator(cpu=True), Path(cfg.output_dir))
    return model, state


def _losses(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_accumulation_equals_one_big_batch_including_partial_window(tmp_path):
    # 11 examples: windows of 4 = [2+2], [2+2], [2+1] with accumulation; [4], [4], [3] without
    a, _ = _run(_cfg(tmp_path / "a", batch_size=2, grad_accum=2), ToyModel())
    b, _ = _run(_cfg(tmp_path / "b", batch_size=4, grad_accum=1), ToyModel())
    torch.testing.assert_close(a.linear.weight, b.linear.weight, atol=1e-6, rtol=1e-6)
    # and the logged losses are the same window means
    assert _losses(tmp_path / "a") == pytest.approx(_losses(tmp_path / "b"), abs=1e-6)


class PartsAlgorithm(ToyAlgorithm):
    """The same loss in two parts (half the squared error each), with a log of the order in which
    each part's forward and backward run."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.log = []

    def parts(self, batch):
        return 2

    def loss(self, scorer, batch, part=None):
        assert part in (0, 1)
        self.log.append(f"forward{part}")
        err = scorer(self.x[batch]) - self.y[batch]
        err.register_hook(lambda grad: self.log.append(f"backward{part}"))
        return err**2 / 2, {"abs_error": err.abs().mean().detach() / 2}


def test_loss_parts_back_propagate_one_at_a_time_to_the_whole_gradient(tmp_path):
    a, _ = _run(_cfg(tmp_path / "a", grad_accum=2), ToyModel())
    parts = PartsAlgorithm(_cfg(tmp_path / "b", grad_accum=2))
    b, _ = _run(_cfg(tmp_path / "b", grad_accum=2), ToyModel(), parts)
    torch.testing.assert_close(a.linear.weight, b.linear.weight, atol=1e-6, rtol=1e-6)
    assert _losses(tmp_path / "a") == pytest.approx(_losses(tmp_path / "b"), abs=1e-6)
    # each part's backward before the next part's forward: one part's activations held at a time
    assert parts.log[:4] == ["forward0", "backward0", "forward1", "backward1"]
    assert len(parts.log) == 4 * 12  # 6 micro-batches per epoch, 2 epochs


@pytest.mark.parametrize("stop_at", [2, 6])  # mid-epoch (6 micro-batches per epoch) and at the epoch boundary
def test_resume_continues_exactly(tmp_path, stop_at):
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    full, _ = _run(_cfg(full_dir, save_every=stop_at, keep_checkpoints=10), ToyModel(dropout=0.3))
    # a second run that "crashed" right after the checkpoint at stop_at: copy what it had on disk
    part_dir.mkdir()
    shutil.copytree(full_dir / "checkpoints" / f"step-{stop_at}", part_dir / "checkpoints" / f"step-{stop_at}")
    lines = (full_dir / "metrics.jsonl").read_text().splitlines()
    (part_dir / "metrics.jsonl").write_text("".join(l + "\n" for l in lines if json.loads(l)["step"] <= stop_at))
    resumed, state = _run(_cfg(part_dir, resume="latest", save_every=stop_at, keep_checkpoints=10), ToyModel(seed=99, dropout=0.3))
    assert state.step == 12
    assert _losses(part_dir) == _losses(full_dir)  # bitwise: same data, same RNG, same optimizer state
    torch.testing.assert_close(resumed.linear.weight, full.linear.weight, atol=0, rtol=0)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, save_every=2)
    algorithm = ToyAlgorithm(cfg, poison={"loss": {4}})
    with pytest.raises(TrainingAborted, match="non-finite loss at step 4"):
        _run(cfg, algorithm=algorithm)
    assert (tmp_path / "checkpoints" / "step-2" / "state.json").is_file()
    assert not (tmp_path / "checkpoints" / "step-4").exists()


def test_non_finite_gradients_are_skipped_then_abort(tmp_path):
    cfg = _cfg(tmp_path, max_bad_steps=2)
    model = ToyModel()
    algorithm = ToyAlgorithm(cfg, poison={"grad": {3}})
    _, state = _run(cfg, model, algorithm)
    assert state.skipped_steps == 1 and torch.isfinite(model.linear.weight).all()

    cfg2 = _cfg(tmp_path / "b", max_bad_steps=2)
    with pytest.raises(TrainingAborted, match="2 optimizer steps in a row had non-finite gradients"):
        _run(cfg2, algorithm=ToyAlgorithm(cfg2, poison={"grad": {3, 4}}))


def test_training_reduces_the_objective(tmp_path):
    model, state = _run(_cfg(tmp_path, epochs=20.0, learning_rate=0.1))
    evals = [r["eval/mse"] for r in state.history if "eval/mse" in r]
    losses = [r["loss"] for r in state.history if "loss" in r]
    assert losses[-1] < 0.2 * losses[0]
    assert evals[-1] < 0.5


def test_trains_in_train_mode_even_when_handed_an_eval_mode_model(tmp_path):
    # from_pretrained returns models in eval mode; dropout (and checkpointing) need train mode
    cfg = _cfg(tmp_path, epochs=1.0)
    model = ToyModel(dropout=0.5).eval()
    algorithm = ToyAlgorithm(cfg)
    modes = []
    loss = algorithm.loss
    algorithm.loss = lambda scorer, batch: (modes.append(scorer.training), loss(scorer, batch))[1]
    _run(cfg, model, algorithm)
    assert modes and all(modes)
