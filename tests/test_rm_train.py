"""Reward-model training end to end on tiny random backbones (an encoder with MiniLM's tokenizer,
a decoder with SmolLM2's), through the same loop, saving and scoring as a reward source."""

import dataclasses
import json

import pytest
import torch

from alignlab.data.records import BinaryRecord, PairwiseRecord, RatingRecord
from alignlab.train.reward import RMConfig, train_reward_model

WORDS = ["cats", "rain", "tea", "maps", "trains", "bread", "snow", "music", "paint", "boats", "lamps", "owls",
         "clouds", "shoes", "rivers", "kites"]


def pairs(topics):
    return [PairwiseRecord(prompt=f"Tell me about {t}.", chosen=f"I love {t}, wonderful and great.",
                           rejected=f"I hate {t}, awful and bad.") for t in topics]


def cfg(tmp_path, model, config_class=RMConfig, name="rm", **kw):
    """A small fast config of `config_class` (the pairwise preference model's tests share it)."""
    base = dict(model=str(model), output_dir=str(tmp_path / name), batch_size=4, epochs=6.0, learning_rate=3e-3,
                warmup_ratio=0.0, progress=False, max_length=64)
    base.update(kw)
    return config_class(**base)


@pytest.mark.parametrize("which", ["encoder", "causal"])
def test_pairwise_rm_learns_held_out_preferences(tmp_path, which, tiny_encoder_dir, tiny_policy_dir):
    model = tiny_encoder_dir if which == "encoder" else tiny_policy_dir
    session = train_reward_model(cfg(tmp_path, model), train_records=pairs(WORDS[:12]), eval_records=pairs(WORDS[12:]))
    evals = [r for r in session.state.history if "eval/accuracy" in r]
    assert evals[-1]["eval/accuracy"] == 1.0
    losses = [r["loss"] for r in session.state.history if "loss" in r]
    assert sum(losses[-3:]) / 3 < losses[0] - 0.2

    from alignlab.rewards.model import RewardModelSource

    source = RewardModelSource(session.final_dir)
    held = pairs(WORDS[12:])
    chosen = source.score([p.prompt for p in held], [p.chosen for p in held])
    rejected = source.score([p.prompt for p in held], [p.rejected for p in held])
    assert (chosen > rejected).all()


def test_ensemble_members_share_a_frozen_backbone_and_disagree(tmp_path, tiny_encoder_dir):
    session = train_reward_model(cfg(tmp_path, tiny_encoder_dir, ensemble=3, learning_rate=3e-2),
                                 train_records=pairs(WORDS[:12]), eval_records=pairs(WORDS[12:]))
    model = session.model
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert model.head_weight.shape[0] == 3
    from alignlab.eval.reward_eval import evaluate_pairs
    from alignlab.rewards.model import RewardModelSource

    source = RewardModelSource(session.final_dir, how="wco")
    result = evaluate_pairs(source, pairs(WORDS[12:]), output_dir=tmp_path / "eval")
    assert result["ensemble"]["members"] == 3 and result["ensemble"]["mean_reward_std"] > 0
    assert (tmp_path / "eval" / "reliability.png").is_file()
    assert 0.0 <= result["ece"] <= 1.0


@pytest.mark.parametrize("which", ["encoder", "causal"])
def test_each_member_is_centered_on_the_training_responses_without_changing_differences(tmp_path, which,
                                                                                    tiny_encoder_dir, tiny_policy_dir):
    from alignlab.rewards.model import RewardModelSource

    model = tiny_encoder_dir if which == "encoder" else tiny_policy_dir
    train = pairs(WORDS[:8])
    prompts = [p.prompt for p in train] * 2
    texts = [p.chosen for p in train] + [p.rejected for p in train]
    scores = {}
    for center in (True, False):
        session = train_reward_model(cfg(tmp_path / str(center), model, ensemble=2, learning_rate=3e-2, epochs=2.0,
                                         center_rewards=center), train_records=train)
        scores[center] = RewardModelSource(session.final_dir).member_scores(prompts, texts)  # (K, N)
    raw, centered = scores[False], scores[True]
    # the uncentered members sit at different, arbitrary levels; centered, each averages 0 on its training responses
    assert (raw.mean(1) - raw.mean(1)[0]).abs().max() > 1e-3
    torch.testing.assert_close(centered.mean(1), torch.zeros(2), atol=1e-4, rtol=0)
    # one constant per member: every difference between two responses (so accuracy and BT probabilities) is kept
    torch.testing.assert_close(centered - centered[:, :1], raw - raw[:, :1], atol=1e-4, rtol=1e-4)
    meta = json.loads((tmp_path / "True" / "rm" / "final" / "alignlab_reward.json").read_text())
    assert len(meta["reward_offset"]) == 2


def test_separately_trained_models_read_as_one_ensemble(tmp_path, tiny_encoder_dir):
    from alignlab.rewards.spec import build_reward_source

    train = pairs(WORDS[:6])
    dirs = [train_reward_model(cfg(tmp_path / f"s{seed}", tiny_encoder_dir, seed=seed, epochs=1.0),
                               train_records=train).final_dir for seed in (0, 1)]
    prompts, texts = [p.prompt for p in train], [p.chosen for p in train]
    wco = build_reward_source(f"rm:{dirs[0]}+{dirs[1]}", how="wco")
    members = wco.member_scores(prompts, texts)
    assert members.shape == (2, len(train)) and not torch.allclose(members[0], members[1])
    torch.testing.assert_close(wco.score(prompts, texts), members.min(0).values)
    torch.testing.assert_close(build_reward_source(f"rm:{dirs[0]}+{dirs[1]}").score(prompts, texts), members.mean(0))
    with pytest.raises(ValueError, match="direction"):
        build_reward_source(f"rm:{dirs[0]}+{dirs[1]}@1")
    # eval rm reads the pair as one ensemble: two members, disagreement reported
    from alignlab.cli import main

    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in pairs(WORDS[12:])))
    assert main(["eval", "rm", "--model", f"{dirs[0]}+{dirs[1]}", "--data", str(data), "--how", "wco",
                 "--output", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "rm_eval.json").read_text())["ensemble"]["members"] == 2


def test_a_lora_reward_model_adapts_all_linear_layers_and_saves_merged(tmp_path, tiny_policy_dir):
    from alignlab.rewards.model import RewardModelSource

    session = train_reward_model(cfg(tmp_path, tiny_policy_dir, lora=True, lora_r=4, lora_alpha=8, learning_rate=1e-2),
                                 train_records=pairs(WORDS[:12]), eval_records=pairs(WORDS[12:]))
    assert any("lora_" in n for n, _ in session.model.backbone.named_parameters())
    assert [r for r in session.state.history if "eval/accuracy" in r][-1]["eval/accuracy"] == 1.0
    held = pairs(WORDS[12:])
    source = RewardModelSource(session.final_dir)  # merged: a plain classifier folder, no adapter files
    assert not source.model.adapter_names
    chosen = source.score([p.prompt for p in held], [p.chosen for p in held])
    assert (chosen > source.score([p.prompt for p in held], [p.rejected for p in held])).all()


@pytest.mark.parametrize("which,top", [("encoder", 0), ("causal", 0), ("encoder", 1), ("causal", 1)])
def test_lora_members_train_their_own_adapters_on_one_frozen_backbone(tmp_path, which, top, tiny_encoder_dir,
                                                                       tiny_policy_dir):
    """top: adapters on the top layer only (the bottom one a shared trunk), or on every layer."""
    from alignlab.rewards.model import RewardModelSource

    model = tiny_encoder_dir if which == "encoder" else tiny_policy_dir
    session = train_reward_model(cfg(tmp_path, model, ensemble=2, ensemble_kind="lora", lora_r=4, lora_alpha=8,
                                     learning_rate=1e-2, epochs=4.0, lora_layers=top),
                                 train_records=pairs(WORDS[:12]), eval_records=pairs(WORDS[12:]))
    rm = session.model
    assert rm.adapter_names == ("member0", "member1")
    named = dict(rm.backbone.named_parameters())
    base = [n for n in named if "lora_" not in n]
    assert base and not any(named[n].requires_grad for n in base)  # one frozen base
    for k in range(2):  # every member's adapter was trained (LoRA B starts at 0)
        trained = [p for n, p in named.items() if f"lora_B.member{k}." in n]
        assert trained and any(p.abs().sum() > 0 for p in trained)
    evals = [r for r in session.state.history if "eval/accuracy" in r]
    assert evals[-1]["eval/accuracy"] == 1.0
    # saved as the base + heads + members/<adapter>/, and loaded back to the same member scores
    held = pairs(WORDS[12:])
    prompts, texts = [p.prompt for p in held] * 2, [p.chosen for p in held] + [p.rejected for p in held]
    source = RewardModelSource(session.final_dir)
    assert source.model.adapter_names == ("member0", "member1")
    assert (rm.trunk is not None) == (source.model.trunk is not None) == bool(top)
    assert all(".1." in n for n in named if "lora_" in n) or not top  # only the top layer adapted
    scores = source.member_scores(prompts, texts)
    assert scores.shape == (2, len(texts)) and not torch.allclose(scores[0], scores[1])
    assert (scores[:, : len(held)] > scores[:, len(held):]).all()
    from alignlab.models.reward import score_sequences

    rm.eval()
    in_memory, _ = score_sequences(rm, source._encode(prompts, texts), pad_token_id=source.pad_token_id)
    torch.testing.assert_close(in_memory.T, scores, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("top", [0, 1])
def test_lora_members_back_propagate_one_member_at_a_time_to_the_same_gradient(tmp_path, top, tiny_encoder_dir):
    from alignlab.train.reward import RewardAlgorithm
    from alignlab.train.reward_data import prepare_reward_session

    c = cfg(tmp_path, tiny_encoder_dir, ensemble=3, ensemble_kind="lora", lora_r=4, lora_alpha=8, lora_layers=top)
    session, items = prepare_reward_session(c, train_records=pairs(WORDS[:12]))
    with torch.no_grad():  # LoRA B starts at 0: make every adapter matter
        for n, p in session.model.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    algo = RewardAlgorithm(c, session.model, items["train"], [], session.pad_token_id)
    batch = algo.micro_batches(0)[0]
    assert algo.parts(batch) == 3
    params = [p for p in session.model.parameters() if p.requires_grad]

    def grads(parts):
        for p in params:
            p.grad = None
        total, metrics = 0.0, {}
        for part in parts:
            per_example, m = algo.loss(session.model, batch, part=part)
            per_example.sum().backward()
            total += float(per_example.sum())
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + float(v)
        return [p.grad.clone() for p in params], total, metrics

    whole, whole_loss, whole_metrics = grads([None])
    split, split_loss, split_metrics = grads([0, 1, 2])
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    assert split_metrics == pytest.approx(whole_metrics, rel=1e-5)
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    names = [n for n, p in session.model.named_parameters() if p.requires_grad]
    # every adapter and head weight got its gradient; the head bias cancels in r_chosen - r_rejected (0 up to rounding)
    assert all(g.abs().sum() > 0 for n, g in zip(names, split) if n != "head_bias")
    heads = RewardAlgorithm(cfg(tmp_path, tiny_encoder_dir, ensemble=3), session.model, items["train"], [], 0)
    assert heads.parts(batch) == 1  # heads share one forward: no split


def test_lora_members_are_checked_against_settings_they_cannot_have(tmp_path):
    from alignlab.config import ConfigError

    for bad in (dict(ensemble_kind="copies"), dict(ensemble_kind="lora", freeze_backbone=True)):
        with pytest.raises(ConfigError, match="ensemble_kind"):
            RMConfig(output_dir=str(tmp_path), ensemble=2, **bad).validate()


def test_ratings_objective_regresses_each_attribute(tmp_path, tiny_encoder_dir):
    records = [RatingRecord(prompt=f"Tell me about {t}.", responses=[f"I love {t}.", f"I hate {t}."],
                            ratings=[{"helpful": 4.0, "safe": 1.0}, {"helpful": 1.0, "safe": 3.0}]) for t in WORDS]
    session = train_reward_model(cfg(tmp_path, tiny_encoder_dir, objective="ratings", epochs=15.0),
                                 train_records=records[:12], eval_records=records[12:])
    evals = [r for r in session.state.history if "eval/mse" in r]
    assert session.model.attributes == ("helpful", "safe")
    assert evals[-1]["eval/mse"] < 0.5  # from ~6 at init (targets 1..4)
    # read along a DPA direction through the reward spec online trainers use: (3, 4) / 5 . attributes
    from alignlab.rewards.model import RewardModelSource, direction_vector
    from alignlab.rewards.spec import build_reward_source

    texts, prompts = ["I love tea.", "I hate tea."], ["Tell me about tea."] * 2
    attrs = RewardModelSource(session.final_dir).score_attributes(prompts, texts)  # (N, A)
    for spec in (f"rm:{session.final_dir}@helpful=3,safe=4", f"rm:{session.final_dir}@3,4"):
        got = build_reward_source(spec).score(prompts, texts)
        assert torch.allclose(got, attrs @ torch.tensor([0.6, 0.8]), atol=1e-5), spec
    assert direction_vector("safe=2", ("helpful", "safe")) == [0.0, 2.0]
    with pytest.raises(ValueError, match="unknown attribute"):
        direction_vector({"kind": 1.0}, ("helpful", "safe"))
    with pytest.raises(ValueError, match="write numbers"):
        build_reward_source(f"rm:{session.final_dir}@helpful=high")


def test_binary_objective_learns_thumbs_up(tmp_path, tiny_encoder_dir):
    records = [BinaryRecord(prompt=f"About {t}.", response=f"I love {t}." if i % 2 else f"I hate {t}.", desirable=bool(i % 2))
               for i, t in enumerate(WORDS * 2)]
    session = train_reward_model(cfg(tmp_path, tiny_encoder_dir, objective="binary", eval_fraction=0.25),
                                 train_records=records)
    evals = [r for r in session.state.history if "eval/accuracy" in r]
    assert evals[-1]["eval/accuracy"] >= 0.875


def test_train_and_eval_rm_from_the_command_line(tmp_path, tiny_encoder_dir, capsys):
    from alignlab.cli import main

    data = tmp_path / "prefs.jsonl"
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "subset": "a" if i % 2 else "b"}
            for i, p in enumerate(pairs(WORDS))]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["train", "rm", "--model", str(tiny_encoder_dir), "--train-data", str(data), "--output-dir",
                 str(tmp_path / "run"), "--max-steps", "3", "--progress", "false", "--eval-fraction", "0.25"]) == 0
    printed = capsys.readouterr().out  # the one report of the trainer table: common line, then the trainer's
    assert f"rm done: 3 steps; model saved to {tmp_path / 'run' / 'final'}" in printed
    assert "examples/s over" in printed and "final eval: " in printed and "accuracy=" in printed
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["algorithm"] == "rm-pairwise" and "accuracy" in summary["final_eval"]
    assert main(["eval", "rm", "--model", str(tmp_path / "run" / "final"), "--data", str(data), "--output",
                 str(tmp_path / "ev"), "--consistency"]) == 0
    out = json.loads((tmp_path / "ev" / "rm_eval.json").read_text())
    assert set(out["accuracy_by_subset"]) == {"a", "b"} and out["pairs"] == len(WORDS)
    assert out["consistency"]["contrast_pairs"] >= len(WORDS) // 2  # "Tell me about X." prompts pair up


def test_data_strength_flags_the_mislabeled_pair_and_training_can_flip_it(tmp_path, tiny_encoder_dir, capsys):
    from alignlab.cli import main

    session = train_reward_model(cfg(tmp_path, tiny_encoder_dir, ensemble=3, learning_rate=3e-2),
                                 train_records=pairs(WORDS[:12]))
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs(WORDS[12:])]
    rows[1]["chosen"], rows[1]["rejected"] = rows[1]["rejected"], rows[1]["chosen"]  # a flipped label
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "s.jsonl"
    capsys.readouterr()
    assert main(["data", "strength", str(data), "--rm", str(session.final_dir), "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [s["where"].endswith("line 2") for s in summary["likely_mislabeled"]] == [True]
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert scored[1]["strength"] < 0 < min(s["strength"] for i, s in enumerate(scored) if i != 1)
    # separately trained models as one ensemble (DIR1+DIR2): the same model twice has the same votes and gaps
    twice = tmp_path / "s2.jsonl"
    assert main(["data", "strength", str(data), "--rm", f"{session.final_dir}+{session.final_dir}",
                 "--output", str(twice)]) == 0
    assert json.loads(capsys.readouterr().out)["likely_mislabeled"] == summary["likely_mislabeled"]
    again = [json.loads(line) for line in twice.read_text().splitlines()]
    assert [r["strength"] for r in again] == pytest.approx([r["strength"] for r in scored], abs=1e-5)

    from alignlab.data import load_records
    from alignlab.train.reward_data import encode_items

    records = load_records(out).records
    assert records[1].meta["strength"] < 0
    flipped = cfg(tmp_path, tiny_encoder_dir, strength_weighting="flip")
    from transformers import AutoTokenizer

    from alignlab.data import DataReport

    report = DataReport()
    items = encode_items(flipped, AutoTokenizer.from_pretrained(tiny_encoder_dir), records, ["reward"], "s", report)
    assert report["flipped: negative preference strength"] == 1
    assert items[1].responses[0] == encode_items(flipped, AutoTokenizer.from_pretrained(tiny_encoder_dir),
                                                 [records[1]], ["reward"], "s", DataReport())[0].responses[0]


def test_cost_objective_orders_harm_and_anchors_the_sign(tmp_path, tiny_encoder_dir):
    data = tmp_path / "safety.jsonl"
    rows = []
    for i, t in enumerate(WORDS):
        unsafe_chosen = i % 4 == 0  # sometimes both responses are unsafe
        rows.append({"prompt": f"How do I get {t}?", "chosen": f"Buy {t} at a shop." if not unsafe_chosen else f"Take {t}, hit back.",
                     "rejected": f"Steal {t}, hurt them.", "chosen_safe": not unsafe_chosen, "rejected_safe": False})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    session = train_reward_model(cfg(tmp_path, tiny_encoder_dir, objective="cost", train_data=str(data), epochs=10.0,
                                     eval_fraction=0.25))
    evals = [r for r in session.state.history if "eval/accuracy" in r][-1]
    assert evals["eval/accuracy"] == 1.0 and evals["eval/sign_accuracy"] >= 0.75
    bad = data.read_text().replace('"chosen_safe": true', '"chosen_safe": "yes"', 1)
    data.write_text(bad)
    with pytest.raises(ValueError, match="line 2, field 'chosen_safe'"):
        train_reward_model(cfg(tmp_path / "b", tiny_encoder_dir, objective="cost", train_data=str(data)))


def test_gradient_checkpointing_trains_the_same_reward_model_and_saves_fewer_activations(tmp_path, tiny_policy_dir,
                                                                                       monkeypatch):
    # The setting was once silently ignored by reward-model training, and later inert because the
    # loop left the model in eval mode. Count the tensors autograd saves for backward during the
    # training forwards: checkpointed layers save their inputs only (their own saved tensors go to
    # the checkpoint's inner hooks, not ours), so the count must drop; the losses stay the same.
    from alignlab.train.reward import RewardAlgorithm

    loss = RewardAlgorithm.loss
    saved = {}

    def counting_loss(self, scorer, batch):
        def pack(t):
            saved[key] = saved.get(key, 0) + 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            return loss(self, scorer, batch)

    monkeypatch.setattr(RewardAlgorithm, "loss", counting_loss)
    runs = {}
    for key in (False, True):
        session = train_reward_model(cfg(tmp_path / str(key), tiny_policy_dir, epochs=1.0, gradient_checkpointing=key),
                                     train_records=pairs(WORDS[:8]))
        runs[key] = [r["loss"] for r in session.state.history if "loss" in r]
        assert getattr(session.model.backbone, "is_gradient_checkpointing", False) == key
    assert runs[True] == pytest.approx(runs[False], abs=1e-5)
    assert saved[True] < saved[False] / 2, saved


def test_head_learning_rate_is_its_own_optimizer_group_and_moves_the_head(tmp_path, tiny_encoder_dir):
    from alignlab.models.reward_io import build_reward_model
    from alignlab.train.loop import build_optimizer

    model = build_reward_model(str(tiny_encoder_dir))
    initial = model.head_weight.detach().clone()
    config = cfg(tmp_path, tiny_encoder_dir, learning_rate=1e-5, head_learning_rate=1e-2)
    groups = build_optimizer(config, model).param_groups
    assert [g["lr"] for g in groups] == [1e-5, 1e-2]
    head = {id(p) for p in model.head_parameters()}
    assert {id(p) for p in groups[1]["params"]} == head and not head & {id(p) for p in groups[0]["params"]}
    assert len(build_optimizer(cfg(tmp_path, tiny_encoder_dir), model).param_groups) == 1  # 0: one rate for all
    with pytest.raises(ValueError, match="no head_parameters"):  # never silently one rate for all
        build_optimizer(config, torch.nn.Linear(2, 2))

    def head_moved(**kw):  # 5 steps at a backbone's fine-tuning rate; Adam moves a weight about lr per step
        session = train_reward_model(cfg(tmp_path / str(len(kw)), tiny_encoder_dir, learning_rate=1e-5, max_steps=5, **kw),
                                     train_records=pairs(WORDS[:12]))
        return float((session.model.head_weight.detach() - initial).abs().max())

    assert head_moved() < 6e-5 < 1e-2 < head_moved(head_learning_rate=1e-2)


def test_label_noise_options_are_checked(tmp_path):
    from alignlab.config import ConfigError

    for bad, match in ((dict(flip_rate=0.1, label_smoothing=0.1), "set one"), (dict(flip_rate=0.5), "flip_rate")):
        with pytest.raises(ConfigError, match=match):
            RMConfig(output_dir=str(tmp_path), **bad).validate()
    RMConfig(output_dir=str(tmp_path), flip_rate=0.1).validate()


@pytest.mark.parametrize("which,objective", [("encoder", "binary"), ("causal", "binary"), ("encoder", "pairwise")])
def test_an_over_long_example_is_cut_the_same_way_in_training_and_scoring(tmp_path, which, objective,
                                                                         tiny_encoder_dir, tiny_policy_dir):
    """One truncation rule: the tokens a reward model trained on are the tokens it scores."""
    from alignlab.rewards.model import RewardModelSource
    from alignlab.train.reward_data import prepare_reward_session

    model = tiny_encoder_dir if which == "encoder" else tiny_policy_dir
    long_prompt = "Tell me everything about " + " and ".join(WORDS) + "."
    long_response = "Well, " + ", ".join(w + " are lovely" for w in WORDS) + "."
    if objective == "binary":
        records = [BinaryRecord(prompt=long_prompt, response=long_response, desirable=True),
                   BinaryRecord(prompt="Short?", response=long_response, desirable=False)]
    else:  # chosen and rejected of one length: the pair's cut is each response's own cut
        records = [PairwiseRecord(prompt=long_prompt, chosen=long_response, rejected=long_response.upper())]
    c = cfg(tmp_path, model, objective=objective, max_length=24, truncation="truncate", epochs=1.0)
    session, items = prepare_reward_session(c, train_records=records)
    trained = [(it.prompt_ids, r) for it in items["train"] for r in it.responses]
    assert all(len(p) + len(r) == 24 for p, r in trained[:1])  # really cut
    run = train_reward_model(dataclasses.replace(c, output_dir=str(tmp_path / "rm-run")), train_records=records)
    source = RewardModelSource(run.final_dir, max_length=24)
    prompts = [r.prompt for r in records for _ in range(1 if objective == "binary" else 2)]
    responses = [x for r in records for x in ([r.response] if objective == "binary" else [r.chosen, r.rejected])]
    assert source._encode(prompts, responses) == trained
    assert source.truncated == len(trained)


@pytest.mark.parametrize("objective", ["binary", "ratings"])
def test_a_huge_single_response_is_refused_or_cut_before_it_is_tokenized(objective, smol_tokenizer):
    """Rated and thumbs-up/down examples get the raw-length guard pairs get (alignlab.data.tokenize)."""
    from alignlab.data import DataReport
    from alignlab.data.errors import DataError
    from alignlab.train.reward_data import encode_items
    from test_data_tokenize import CountingTokenizer

    huge = "word " * 600_000  # 3 MB
    if objective == "binary":
        records = [BinaryRecord(prompt="Hi", response=huge, desirable=True)]
    else:
        records = [RatingRecord(prompt="Hi", responses=["Fine.", huge], ratings=[{"helpful": 1.0}, {"helpful": 2.0}])]
    tok = CountingTokenizer(smol_tokenizer)
    with pytest.raises(DataError, match=r"big.jsonl, record 0: prompt \+ longest response = 3000002 characters"):
        encode_items(RMConfig(objective=objective, truncation="error", max_length=512), tok, records, ["helpful"],
                     "big.jsonl", DataReport())
    report = DataReport()
    items = encode_items(RMConfig(objective=objective, truncation="drop", max_length=512), tok, records, ["helpful"],
                         "big.jsonl", report)
    assert len(items) == (0 if objective == "binary" else 1) and report["dropped: longer than max_length"] == 1
    items = encode_items(RMConfig(objective=objective, truncation="truncate", max_length=512), tok, records,
                         ["helpful"], "big.jsonl", DataReport())
    assert len(items) == (2 if objective == "ratings" else 1)
    assert all(len(it.prompt_ids) + len(it.responses[0]) <= 512 for it in items)
    assert tok.longest <= 513 * 81 < len(huge)  # never the whole text
