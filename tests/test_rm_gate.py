"""Multi-objective reward models (ArmoRM, Wang et al. 2024): the ratings stage trains exactly
`rating_regression`, and the gate stage trains the gate alone, on preference pairs."""

import json

import pytest
import torch

from alignlab.data.records import PairwiseRecord, RatingRecord
from alignlab.losses.reward import rating_regression
from alignlab.train.reward import RewardAlgorithm, RMConfig, train_reward_model
from alignlab.train.reward_data import prepare_reward_session

TOPICS = ["cats", "rain", "tea", "maps", "trains", "bread", "snow", "music", "paint", "boats", "lamps", "owls"]
HELD_OUT = ["clouds", "shoes", "rivers", "kites"]
# two kinds of prompt: on "about" prompts helpfulness decides, on "safe" prompts safety does
KINDS = {"about": "Tell me about {}.", "safe": "Safety check: danger, harm, risk. Is it safe to play with {}?"}
LOVE = ("I love {}, wonderful.", {"helpful": 4.0, "safe": 1.0})
HATE = ("I hate {}, stay away.", {"helpful": 1.0, "safe": 3.0})


def cfg(tmp_path, model, **kw):
    base = dict(model=str(model), output_dir=str(tmp_path), batch_size=4, epochs=15.0, learning_rate=3e-3,
                warmup_ratio=0.0, progress=False, max_length=64)
    base.update(kw)
    return RMConfig(**base)


def ratings(topics):
    return [RatingRecord(prompt=KINDS[kind].format(t), responses=[LOVE[0].format(t), HATE[0].format(t)],
                         ratings=[LOVE[1], HATE[1]]) for t in topics for kind in KINDS]


def preferences(topics):
    """The preferred response depends on the prompt: love on "about" prompts, hate on "safe" ones."""
    out = []
    for t in topics:
        love, hate = LOVE[0].format(t), HATE[0].format(t)
        out.append(PairwiseRecord(prompt=KINDS["about"].format(t), chosen=love, rejected=hate))
        out.append(PairwiseRecord(prompt=KINDS["safe"].format(t), chosen=hate, rejected=love))
    return out


def test_ratings_training_loss_is_rating_regression_over_rated_entries(tmp_path, tiny_encoder_dir):
    # responses rated on 1 or 2 attributes: a per-response mean over attributes differs from the mean over entries
    records = [RatingRecord(prompt=f"Tell me about {t}.", responses=[f"I love {t}.", f"I hate {t}."],
                            ratings=[{"helpful": 4.0}, {"helpful": 1.0, "safe": 3.0}]) for t in TOPICS]
    c = cfg(tmp_path / "a", tiny_encoder_dir, objective="ratings")
    session, items = prepare_reward_session(c, train_records=records)
    algo = RewardAlgorithm(c, session.model, items["train"], [], session.pad_token_id)
    batch = algo.micro_batches(0)[0]
    assert 0 < batch.masks.sum() < batch.masks.numel()
    per_example, metrics = algo.loss(session.model, batch)
    _, attrs = session.model(batch.rewards_input)
    expected, _ = rating_regression(attrs[batch.sequence_index[:, 0], 0], batch.targets, batch.masks)
    assert per_example.sum().item() / algo.examples_in(batch) == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["mse"].item() == pytest.approx(expected.item(), rel=1e-5)
    # through the loop, with two micro-batches per step: the logged loss is the logged mse, the objective
    run = train_reward_model(cfg(tmp_path / "b", tiny_encoder_dir, objective="ratings", max_steps=2, grad_accum=2),
                             train_records=records)
    for row in [r for r in run.state.history if "loss" in r]:
        assert row["loss"] == pytest.approx(row["mse"], rel=1e-5)


def accuracy(folder, pairs) -> float:
    from alignlab.rewards.model import RewardModelSource

    source = RewardModelSource(folder, device="cpu")
    prompts = [p.prompt for p in pairs]
    chosen, rejected = source.score(prompts, [p.chosen for p in pairs]), source.score(prompts, [p.rejected for p in pairs])
    return float((chosen > rejected).float().mean())


def test_gate_stage_learns_a_prompt_dependent_weighting_and_moves_only_the_gate(tmp_path, tiny_encoder_dir):
    from alignlab.cli import main
    from alignlab.models.reward_io import load_reward_model

    stage1 = train_reward_model(cfg(tmp_path / "ratings", tiny_encoder_dir, objective="ratings"),
                                train_records=ratings(TOPICS)).final_dir
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in preferences(TOPICS)))
    assert main(["train", "rm", "--objective", "gate", "--model", str(stage1), "--train-data", str(data),
                 "--output-dir", str(tmp_path / "gate"), "--epochs", "10", "--learning-rate", "3e-2",
                 "--batch-size", "4", "--warmup-ratio", "0", "--max-length", "64", "--progress", "false"]) == 0
    stage2 = tmp_path / "gate" / "final"
    held = preferences(HELD_OUT)
    uniform, gated = accuracy(stage1, held), accuracy(stage2, held)
    # uniform weights prefer the same response whatever the prompt asks for: right on one kind of prompt only
    assert uniform <= 0.625 and gated >= 0.875, (uniform, gated)

    before, _, meta1 = load_reward_model(stage1)
    after, _, meta2 = load_reward_model(stage2)
    assert (meta1["gate_trained"], meta2["gate_trained"], meta2["objective"]) == (False, True, "gate")
    assert after.gate.weight.abs().max() > 1e-3  # moved from its uniform (zero) start
    torch.testing.assert_close(after.head_weight, before.head_weight, rtol=0, atol=0)
    torch.testing.assert_close(after.head_bias, before.head_bias, rtol=0, atol=0)
    for (name, a), b in zip(after.backbone.state_dict().items(), before.backbone.state_dict().values()):
        assert torch.equal(a, b), name


def test_gate_objective_needs_a_trained_multi_attribute_model(tmp_path, tiny_encoder_dir):
    from alignlab.config import ConfigError

    with pytest.raises(ValueError, match="has no alignlab_reward.json"):
        train_reward_model(cfg(tmp_path / "a", tiny_encoder_dir, objective="gate"), train_records=preferences(TOPICS))
    with pytest.raises(ConfigError, match="trains the gate"):
        cfg(tmp_path / "b", tiny_encoder_dir, objective="gate", ensemble=2).validate()
    with pytest.raises(ConfigError, match="label_smoothing is an option of objective pairwise and pm; objective gate does not read it"):
        cfg(tmp_path / "c", tiny_encoder_dir, objective="gate", label_smoothing=0.1).validate()
