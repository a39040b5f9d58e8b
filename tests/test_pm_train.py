"""The pairwise preference model: antisymmetric by construction (exactly, trained or not), learns
held-out preferences, saves and loads without pickle, and trains from the command line."""

import json
import math

import pytest
import torch

from alignlab.cli import main
from alignlab.preferences import build_preference_source
from alignlab.preferences.pairwise import PairwisePreference, antisymmetric_sigmoid, joint_response
from alignlab.train.pm import PMConfig, train_pm
from test_rm_train import WORDS, pairs
from test_rm_train import cfg as rm_cfg


def cfg(tmp_path, model, **kw):
    return rm_cfg(tmp_path, model, PMConfig, "pm", **{"max_length": 96, **kw})


def test_antisymmetric_sigmoid_sums_to_one_exactly():
    z = torch.tensor([0.0, 1e-9, 0.3, -0.3, 7.5, -40.0, 123.0], dtype=torch.float64)
    assert torch.equal(antisymmetric_sigmoid(z) + antisymmetric_sigmoid(-z), torch.ones_like(z))
    assert torch.allclose(antisymmetric_sigmoid(z), torch.sigmoid(z))
    z32 = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 5
    assert torch.equal(antisymmetric_sigmoid(z32) + antisymmetric_sigmoid(-z32), torch.ones_like(z32))


def _check_exact_symmetry(source: PairwisePreference):
    prompts = ["Tell me about tea.", "Tell me about owls.", "Hi", "Same?"]
    a = ["I love tea, wonderful.", "I hate owls.", "hello", "same"]
    b = ["I hate tea, awful.", "Owls are fine, I guess, lovely.", "hello there", "same"]
    p_ab, p_ba = source.prefer(prompts, a, b), source.prefer(prompts, b, a)
    assert torch.equal(p_ab + p_ba, torch.ones(4))
    assert p_ab[3].item() == 0.5  # the same response twice: an exact tie
    logit_ab = source.logits(prompts, a, b)
    assert torch.equal(logit_ab, -source.logits(prompts, b, a))
    return p_ab


@pytest.mark.parametrize("which", ["encoder", "causal"])
def test_pm_learns_held_out_preferences_and_stays_exactly_symmetric(tmp_path, which, tiny_encoder_dir,
                                                                    tiny_policy_dir):
    model = tiny_encoder_dir if which == "encoder" else tiny_policy_dir
    c = cfg(tmp_path, model, learning_rate=1e-2, epochs=8.0, eval_every=3)
    session = train_pm(c, train_records=pairs(WORDS[:12]), eval_records=pairs(WORDS[12:]))
    evals = [r for r in session.state.history if "eval/accuracy" in r]
    # a fresh head scores ~0 (P ~ 0.5, held-out loss ~ ln 2); training takes it to every held-out pair
    assert evals[-1]["eval/accuracy"] == 1.0
    assert evals[-1]["eval/loss"] < min(math.log(2) - 0.3, evals[0]["eval/loss"])
    assert json.loads((session.run_dir / "summary.json").read_text())["algorithm"] == "pm"

    source = build_preference_source(f"pm:{session.final_dir}")
    held = pairs(WORDS[12:])
    p = source.prefer([r.prompt for r in held], [r.chosen for r in held], [r.rejected for r in held])
    assert (p > 0.5).all()
    _check_exact_symmetry(source)


def test_untrained_pm_is_exactly_symmetric_and_training_moves_it(tmp_path, tiny_encoder_dir):
    from alignlab.models.reward_io import build_reward_model, save_reward_model
    from transformers import AutoTokenizer

    fresh = build_reward_model(str(tiny_encoder_dir), seed=0)  # what train_pm starts from (seed 0)
    untrained_dir = save_reward_model(fresh, AutoTokenizer.from_pretrained(tiny_encoder_dir), tmp_path / "fresh",
                                      objective="pm")
    before = PairwisePreference(untrained_dir)
    _check_exact_symmetry(before)

    session = train_pm(cfg(tmp_path, tiny_encoder_dir, epochs=2.0, learning_rate=1e-2), train_records=pairs(WORDS))
    after = PairwisePreference(session.final_dir)
    moved = [n for (n, p0), (_, p1) in zip(before.scorer.model.named_parameters(),
                                           after.scorer.model.named_parameters()) if not torch.equal(p0, p1)]
    assert "head_weight" in moved and any("encoder" in n for n in moved)
    held = pairs(WORDS[:4])
    args = ([r.prompt for r in held], [r.chosen for r in held], [r.rejected for r in held])
    assert after.logits(*args).mean() > before.logits(*args).mean() + 1.0


def test_save_load_round_trip_keeps_the_probabilities(tmp_path, tiny_encoder_dir):
    session = train_pm(cfg(tmp_path, tiny_encoder_dir, max_steps=2), train_records=pairs(WORDS[:8]))
    files = {p.name for p in session.final_dir.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    source = PairwisePreference(session.final_dir)
    model = session.model.eval()  # the trained module itself, scored the same way
    held = pairs(WORDS[8:12])
    prompts, a, b = [r.prompt for r in held], [r.chosen for r in held], [r.rejected for r in held]
    tok = source.scorer.tokenizer
    from alignlab.data.tokenize import encode_prompt_response
    from alignlab.models.reward import score_sequences

    seqs = [encode_prompt_response(tok, x, joint_response(y, z)) for x, y, z in zip(prompts, a, b)]
    seqs += [encode_prompt_response(tok, x, joint_response(z, y)) for x, y, z in zip(prompts, a, b)]
    with torch.no_grad():
        r = score_sequences(model.cpu(), seqs, pad_token_id=source.scorer.pad_token_id)[0][:, 0].double()
    expected = torch.sigmoid(r[:4] - r[4:])
    assert source.prefer(prompts, a, b).tolist() == pytest.approx(expected.tolist(), abs=1e-5)


def test_a_reward_model_folder_is_not_a_preference_model(tmp_path, tiny_encoder_dir):
    from alignlab.train.reward import RMConfig, train_reward_model

    rm = train_reward_model(RMConfig(model=str(tiny_encoder_dir), output_dir=str(tmp_path / "rm"), max_steps=1,
                                     progress=False, batch_size=4), train_records=pairs(WORDS[:4]))
    with pytest.raises(ValueError, match="not a pairwise preference model.*rm:DIR"):
        build_preference_source(f"pm:{rm.final_dir}")


def test_train_pm_from_the_command_line_and_dry_run(tmp_path, tiny_encoder_dir, capsys):
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in pairs(WORDS)))
    common = ["train", "pm", "--model", str(tiny_encoder_dir), "--train-data", str(data), "--progress", "false"]
    assert main([*common, "--output-dir", str(tmp_path / "dry"), "--dry-run"]) == 0
    assert "pairwise preference model" in capsys.readouterr().out
    assert not (tmp_path / "dry").exists()
    assert main([*common, "--output-dir", str(tmp_path / "run"), "--max-steps", "2", "--eval-fraction", "0.25"]) == 0
    assert f"pm done: 2 steps; model saved to {tmp_path / 'run' / 'final'}" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "final" / "alignlab_reward.json").read_text())["objective"] == "pm"
    # a preference model is not a reward model: scoring single responses with it is refused
    assert main(["eval", "rm", "--model", str(tmp_path / "run" / "final"), "--data", str(data)]) == 2
    assert "is a pairwise preference model" in capsys.readouterr().err
    assert main([*common, "--output-dir", str(tmp_path / "x"), "--objective", "pairwise"]) == 2
    assert "train rm" in capsys.readouterr().err
