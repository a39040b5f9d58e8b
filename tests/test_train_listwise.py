"""`alignlab train listwise`: LiPO-lambda and PRO raise the held-out ranking agreement of the
implied rewards on a tiny task, lists of different sizes share a batch without changing any
list's loss, LiPO's reference log-probs are the frozen initial model's, and the command line
runs, dry-runs and rejects a one-response ranking in one line."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from alignlab.cli import main
from alignlab.data import DataReport
from alignlab.data.records import RankingRecord, RatingRecord
from alignlab.losses.listwise import lipo_lambda
from alignlab.models.logprobs import SequenceScorer
from alignlab.train.listwise import ListBatch, ListwiseAlgorithm, ListwiseConfig, encode_split, train_listwise

TOPICS = ["cats", "tea", "rain", "maps", "jazz", "bread", "snow", "clocks", "ships", "moss", "kites", "soup"]
HELD_OUT = ["owls", "boats", "lamps", "paint"]
TEMPLATES = ["I love {t}, they are wonderful.", "I like {t} a bit.", "I do not care for {t}.", "I hate {t}, go away."]


def rankings(topics, size=4):
    return [RankingRecord(f"Tell me about {t}.", [x.format(t=t) for x in TEMPLATES[:size]]) for t in topics]


def ratings(topics):
    """UltraFeedback-style: four rated completions a prompt, listed out of order."""
    order = [2, 0, 3, 1]
    return [RatingRecord(f"Tell me about {t}.", [TEMPLATES[k].format(t=t) for k in order],
                         [{"overall": 10.0 - 3 * k} for k in order]) for t in topics]


def list_cfg(tmp_path, model_dir, name="run", **kw):
    base = dict(model=str(model_dir), output_dir=str(tmp_path / name), batch_size=4, epochs=4.0, learning_rate=3e-3,
                warmup_ratio=0.0, progress=False, max_length=128, lr_schedule="constant")
    base.update(kw)
    return ListwiseConfig(**base)


def independent_logp(model, prompt_ids, response_ids) -> float:
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(ids).logits.float().log_softmax(-1)[0]
    return float(sum(logits[len(prompt_ids) - 1 + j, t] for j, t in enumerate(response_ids)))


@pytest.mark.parametrize("loss, data", [("lipo_lambda", rankings), ("pro", ratings)])
def test_listwise_raises_held_out_ranking_agreement(loss, data, tmp_path, tiny_policy_dir):
    session = train_listwise(list_cfg(tmp_path, tiny_policy_dir, loss=loss), train_records=data(TOPICS),
                             eval_records=data(HELD_OUT))
    final = session.summary["final_eval"]
    # held-out topics: 4 lists x 6 ordered pairs. Before training LiPO's implied rewards are all 0
    # (no pair in order) and PRO's order 14 of 24 (next test); both learn to order 20 of them (on
    # this task both leave the two lowest-ranked responses swapped, a pair LiPO's NDCG-shaped
    # weights barely count)
    assert final["rewards/accuracy"] >= 0.8 and final["rewards/margins"] > 0.5
    losses = [r["loss"] for r in session.state.history if "loss" in r and "eval/loss" not in r]
    assert losses[-1] < losses[0]
    trained = load_file(session.final_dir / "model.safetensors")
    start = load_file(tiny_policy_dir / "model.safetensors")
    assert max(float((trained[k] - start[k]).abs().max()) for k in start) > 1e-2


def test_pro_before_training_orders_held_out_lists_worse(tmp_path, tiny_policy_dir, smol_tokenizer):
    """The agreement above is learnt: the untrained model's length-normalised log-probs do worse."""
    cfg = list_cfg(tmp_path, tiny_policy_dir, loss="pro", beta=0.05, loss_options={"score_temperature": True})
    evals = encode_split(cfg, smol_tokenizer, ratings(HELD_OUT), "eval", DataReport())
    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    algorithm = ListwiseAlgorithm(cfg, model, [], evals, 2)
    with torch.no_grad():
        assert algorithm.evaluate(SequenceScorer(model))["rewards/accuracy"] < 0.65


def test_lists_of_different_sizes_share_a_batch_and_reference_is_frozen(tmp_path, tiny_policy_dir, smol_tokenizer):
    records = rankings(TOPICS[:2], size=4) + rankings(TOPICS[2:4], size=2) + rankings(TOPICS[4:5], size=3)
    session = train_listwise(list_cfg(tmp_path, tiny_policy_dir, max_steps=2, beta=0.5), train_records=records)
    examples = session.train_examples
    assert [len(e.responses) for e in examples] == [4, 4, 2, 2, 3]
    assert examples[2].scores == [1.0, 0.0] and examples[4].scores == [1.0, 0.5, 0.0]
    # ratings: as given for PRO (its temperatures are score gaps), rescaled to [0, 1] for LiPO (gains 2^score)
    pro_cfg, lipo_cfg = (ListwiseConfig(loss=loss, max_length=128) for loss in ("pro", "lipo_lambda"))
    assert encode_split(pro_cfg, smol_tokenizer, ratings(["x"]), "r", DataReport())[0].scores == [4.0, 10.0, 1.0, 7.0]
    assert encode_split(lipo_cfg, smol_tokenizer, ratings(["x"]), "r", DataReport())[0].scores == \
        pytest.approx([1 / 3, 1.0, 0.0, 2 / 3])
    initial = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    cached = load_file(session.run_dir / "reference_logps.safetensors")["train"]  # (5, 4)
    for i, e in enumerate(examples):
        want = [independent_logp(initial, e.prompt_ids, r) for r in e.responses]
        assert cached[i, :len(want)].tolist() == pytest.approx(want, abs=1e-3)
        assert (cached[i, len(want):] == 0).all()
    # a mixed batch gives each list the loss it gets alone, which is LiPO's on its own log-probs
    trained = AutoModelForCausalLM.from_pretrained(session.final_dir)
    algorithm = ListwiseAlgorithm(session.cfg, trained, examples, [], 2, {"train": cached})
    scorer = SequenceScorer(trained)
    mixed, _ = algorithm.loss(scorer, ListBatch([0, 2, 4]))
    alone = torch.cat([algorithm.loss(scorer, ListBatch([i]))[0] for i in (0, 2, 4)])
    assert torch.allclose(mixed.detach(), alone.detach(), atol=1e-4)
    e = examples[4]
    policy = torch.tensor([[independent_logp(trained, e.prompt_ids, r) for r in e.responses]])
    want, _ = lipo_lambda(policy, cached[4:5, :3], torch.tensor([e.scores]), beta=0.5, per_example=True)
    assert float(alone[2].detach()) == pytest.approx(float(want[0]), abs=1e-3) and float(want[0]) > 0


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_trains_and_dry_run_writes_nothing(tmp_path, tiny_policy_dir, capsys):
    rows = [{"prompt": r.prompt, "completions": [{"response": x, "overall_score": s["overall"]}
                                                for x, s in zip(r.responses, r.ratings)]} for r in ratings(TOPICS[:6])]
    data = write_jsonl(tmp_path / "uf.jsonl", rows)
    base = ["train", "listwise", "--model", str(tiny_policy_dir), "--train-data", str(data), "--max-steps", "2",
            "--batch-size", "2", "--max-length", "128", "--progress", "false"]
    assert main(base + ["--output-dir", str(tmp_path / "dry"), "--dry-run", "--loss", "pro"]) == 0
    out = capsys.readouterr().out
    assert "alignlab dry run: listwise" in out and "lists: 4 to 4 responses a prompt (24 responses in all)" in out
    assert "reference policy: not used (pro is reference-free)" in out and "beta: 0.05  (pro loss default)" in out
    assert not (tmp_path / "dry").exists()
    assert main(base + ["--output-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "alignlab: listwise done: 2 steps" in out
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "reference_logps.safetensors").is_file()  # lipo_lambda, the default, has one


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Hi?", "responses": ["Yo."]}, "bad.jsonl, line 2 (record 1), field 'responses': 1 response(s); "
                                              "ranking needs at least 2"),
    ({"prompt": "Hi?", "completions": [{"response": "Yo.", "overall_score": 3}]},
     "bad.jsonl, line 2 (record 1), field 'completions': 1 response(s)"),
])
def test_a_list_of_one_is_one_line_naming_file_line_and_field(row, message, tmp_path, tiny_policy_dir, capsys):
    first = {"prompt": "Ok?", "responses": ["Ok.", "No."]} if "responses" in row else \
        {"prompt": "Ok?", "completions": [{"response": "Ok.", "overall_score": 5}, {"response": "No.", "overall_score": 1}]}
    data = write_jsonl(tmp_path / "bad.jsonl", [first, row])
    code = main(["train", "listwise", "--model", str(tiny_policy_dir), "--train-data", str(data),
                 "--output-dir", str(tmp_path / "run"), "--progress", "false", "--dry-run"])
    err = capsys.readouterr().err
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_thumbs_data_is_refused_with_the_right_trainer_named(tmp_path, tiny_policy_dir, capsys):
    data = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "Hi?", "completion": "Yo.", "label": 1}])
    code = main(["train", "listwise", "--model", str(tiny_policy_dir), "--train-data", str(data),
                 "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code != 0 and "alignlab train kto" in err
