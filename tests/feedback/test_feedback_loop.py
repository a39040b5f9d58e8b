"""The whole loop unattended: push comparisons, simulated annotators judge them through the HTTP
API of a live server, export, train a reward model on the export, and push the next round ranked
by that model's ensemble disagreement. Also: `push --policy A --policy B` samples responses."""

from __future__ import annotations

import json

import pytest
import torch
from feedback_servers import Server

from alignlab.cli import main
from alignlab.data import load_records
from alignlab.feedback import store
from alignlab.feedback.client import FeedbackClient, annotate
from alignlab.feedback.db import open_database
from alignlab.lab.annotators import BradleyTerryAnnotator

WORDS = ["cats", "rain", "tea", "maps", "trains", "bread", "snow", "music", "paint", "boats", "lamps", "owls",
         "clouds", "shoes", "rivers", "kites"]


def good(w):
    return f"I love {w}, wonderful and great."


def bad(w):
    return f"I hate {w}, awful and bad."


def gold(texts):
    return torch.tensor([1.0 if "love" in t else 0.0 for t in texts])


def cli(capsys, *args) -> str:
    assert main(["feedback", *args]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_push_annotate_export_train_and_push_the_next_round_by_uncertainty(tmp_path, capsys, tiny_encoder_dir):
    from alignlab.train.reward import RMConfig, train_reward_model

    db = ["--database-url", f"sqlite:///{tmp_path / 'loop.db'}"]
    cli(capsys, "project", "loop", "--task", "pairwise", "--overlap", "2", *db)
    tokens = {}
    for name in ("sim0", "sim1"):
        cli(capsys, "user", name, "--no-password", *db)
        tokens[name] = cli(capsys, "token", name, *db).strip()
    cli(capsys, "member", "loop", "sim0", "sim1", *db)
    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(json.dumps({"prompt": f"Tell me about {w}.",
                                             "responses": [good(w), bad(w)] if i % 2 else [bad(w), good(w)]}) + "\n"
                                 for i, w in enumerate(WORDS[:12])))
    pushed = json.loads(cli(capsys, "push", "--project", "loop", "--responses", str(responses), *db))
    assert pushed["items_added"] == 12

    server = Server(db[1], tmp_path / "server.log").start()
    try:
        for k, (name, token) in enumerate(tokens.items()):
            client = FeedbackClient(server.url, token)
            judge = BradleyTerryAnnotator(gold, temperature=0.01, seed=k, annotator_id=name)
            assert annotate(client, "loop", judge) == 12
            assert client.next("loop")["done"]
        progress = client.progress("loop")
    finally:
        server.stop()
    assert progress["votes"] == 24 and progress["cohen_kappa"] == pytest.approx(1.0)
    assert progress["krippendorff_alpha"] == pytest.approx(1.0)

    out = tmp_path / "prefs.jsonl"
    summary = json.loads(cli(capsys, "export", "--project", "loop", "-o", str(out), *db))
    assert summary["records"] == 24
    records = load_records(out).records
    assert {r.annotator for r in records} == {"sim0", "sim1"} and all("love" in r.chosen for r in records)

    held_out = [type(records[0])(prompt=f"Tell me about {w}.", chosen=good(w), rejected=bad(w)) for w in WORDS[12:]]
    cfg = RMConfig(model=str(tiny_encoder_dir), output_dir=str(tmp_path / "rm"), batch_size=4, epochs=4.0,
                   learning_rate=3e-3, warmup_ratio=0.0, progress=False, max_length=64)
    session = train_reward_model(cfg, train_records=records, eval_records=held_out)
    assert [r for r in session.state.history if "eval/accuracy" in r][-1]["eval/accuracy"] == 1.0

    # the next round: a project that asks about the pairs the (two-member) ensemble disagrees on
    rm = f"{session.final_dir}+{session.final_dir}"
    cli(capsys, "project", "active", "--task", "pairwise", "--strategy", "uncertainty", *db)
    nxt = tmp_path / "next.jsonl"
    nxt.write_text("".join(json.dumps({"prompt": f"Tell me about {w}.", "responses": [good(w), bad(w)]}) + "\n"
                           for w in WORDS[12:]))
    pushed = json.loads(cli(capsys, "push", "--project", "active", "--responses", str(nxt), "--rm", rm, *db))
    assert pushed["items_added"] == 4
    with open_database(db[1])() as s:
        items = s.scalars(store.select(store.Item).where(store.Item.project_id == store.get_project(s, "active").id)).all()
    for item in items:
        scores = torch.tensor(item.member_scores)  # (K = 2, 2 responses)
        assert scores.shape == (2, 2) and (scores[:, 0] > scores[:, 1]).all()  # the trained RM prefers "love"


def test_push_samples_one_response_per_policy(tmp_path, capsys, tiny_policy_dir):
    db = ["--database-url", f"sqlite:///{tmp_path / 'p.db'}"]
    cli(capsys, "project", "ab", "--task", "pairwise", *db)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hello?"}\n{"prompt": [{"role": "user", "content": "Tell a joke."}]}\n')
    pushed = json.loads(cli(capsys, "push", "--project", "ab", "--prompts", str(prompts), "--policy",
                            str(tiny_policy_dir), "--policy", str(tiny_policy_dir), "--max-new-tokens", "4", *db))
    assert pushed["items_added"] == 2
    with open_database(db[1])() as s:
        items = s.scalars(store.select(store.Item).order_by(store.Item.id)).all()
    assert items[1].prompt == [{"role": "user", "content": "Tell a joke."}]
    assert all(len(i.responses) == 2 and i.sources == [str(tiny_policy_dir)] * 2 for i in items)
    # the two policies sample with different seeds: not both the same text everywhere
    assert any(i.responses[0] != i.responses[1] for i in items)


def test_push_refuses_bad_input_before_loading_anything(tmp_path, capsys):
    db = ["--database-url", f"sqlite:///{tmp_path / 'p.db'}"]
    cli(capsys, "project", "ab", "--task", "pairwise", *db)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "responses": ["x", "y"]}\n{"prompt": "b", "responses": ["x", 3]}\n')
    assert main(["feedback", "push", "--project", "ab", "--responses", str(bad), *db]) == 1
    assert "bad.jsonl, line 2, field 'responses'" in capsys.readouterr().err
    assert main(["feedback", "push", "--project", "ab", "--policy", "x", *db]) == 2
    assert "--policy needs --prompts" in capsys.readouterr().err
    good_file = tmp_path / "good.jsonl"
    good_file.write_text('{"prompt": "a", "responses": ["x", "y"]}\n{"prompt": "b", "responses": ["only one"]}\n')
    assert main(["feedback", "push", "--project", "nope", "--responses", str(good_file), *db]) == 2
    assert "no project 'nope'" in capsys.readouterr().err
    assert main(["feedback", "push", "--project", "ab", "--responses", str(good_file), *db]) == 2
    assert "prompt 2 has 1 response: a pairwise project needs 2 or more" in capsys.readouterr().err
    with open_database(db[1])() as s:
        assert s.scalar(store.select(store.func.count()).select_from(store.Item)) == 0  # nothing half-pushed


def test_people_as_a_preference_source_through_the_app(tmp_path, capsys):
    import threading
    import time as _time

    from alignlab.feedback.preferences import AppPreferenceSource

    db = ["--database-url", f"sqlite:///{tmp_path / 'prefer.db'}"]
    cli(capsys, "project", "online", "--task", "pairwise", "--overlap", "2", *db)
    tokens = {}
    for name in ("sim0", "sim1"):
        cli(capsys, "user", name, "--no-password", *db)
        tokens[name] = cli(capsys, "token", name, *db).strip()
    cli(capsys, "member", "online", "sim0", "sim1", *db)
    server = Server(db[1], tmp_path / "server.log").start()
    stop = threading.Event()

    def person(k, token):  # polls for work like an annotator waiting for the next batch
        client = FeedbackClient(server.url, token)
        judge = BradleyTerryAnnotator(gold, temperature=0.01, seed=k, annotator_id=f"sim{k}")
        while not stop.is_set():
            if annotate(client, "online", judge) == 0:
                _time.sleep(0.05)

    threads = [threading.Thread(target=person, args=(k, t), daemon=True) for k, t in enumerate(tokens.values())]
    try:
        for t in threads:
            t.start()
        source = AppPreferenceSource(db[1], "online", poll_seconds=0.05, timeout=60)
        words = WORDS[:6]
        a = [good(w) if i % 2 else bad(w) for i, w in enumerate(words)]
        b = [bad(w) if i % 2 else good(w) for i, w in enumerate(words)]
        p = source.prefer([f"Tell me about {w}." for w in words], a, b)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        server.stop()
    assert p.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert all(sorted(v["annotator"] for v in votes) == ["sim0", "sim1"] for votes in source.last_votes)
    nobody_left = AppPreferenceSource(db[1], "online", poll_seconds=0.05, timeout=0.3)
    with pytest.raises(TimeoutError, match=r"4 vote\(s\) still missing"):
        nobody_left.prefer(["q", "r"], ["x", "y"], ["y", "x"])
    with pytest.raises(ValueError, match="preferences need a pairwise one"):
        cli(capsys, "project", "stars", "--task", "rating", *db)
        AppPreferenceSource(db[1], "stars")
    # the same source by its spec string, as `train online-dpo --judge app:PROJECT@URL` builds it
    from alignlab.preferences import build_preference_source

    by_spec = build_preference_source(f"app:online@{db[1]}", timeout=0.3)
    assert isinstance(by_spec, AppPreferenceSource) and by_spec.project == "online" and by_spec.votes_needed == 2
    with pytest.raises(ValueError, match="write app:PROJECT@DATABASE_URL"):
        build_preference_source(f"app:{db[1]}")
