"""`alignlab train kto`: the reference point is the detached KL of mismatched pairs, the reference
log-probs come from the frozen initial model, a tiny run raises the implied reward of held-out
desirable over undesirable responses, the dry run states the data balance, and bad data is one line."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from alignlab.cli import main
from alignlab.data.records import BinaryRecord
from alignlab.data.tokenize import prompt_encoder
from alignlab.models.logprobs import SequenceScorer
from alignlab.train.kto import KTOAlgorithm, KTOBatch, KTOConfig, balance_lines, encode_split, train_kto
from alignlab.data import DataReport

TOPICS = ["cats", "tea", "rain", "maps", "jazz", "bread", "snow", "clocks", "ships", "moss", "kites", "soup"]
HELD_OUT = ["owls", "boats", "lamps", "paint"]


def records(topics):
    out = []
    for t in topics:
        out.append(BinaryRecord(f"Tell me about {t}.", f"I love {t}, they are wonderful.", True))
        out.append(BinaryRecord(f"Tell me about {t}.", f"I hate {t}, go away.", False))
    return out


def kto_cfg(tmp_path, model_dir, name="run", **kw):
    base = dict(model=str(model_dir), output_dir=str(tmp_path / name), batch_size=4, epochs=3.0, learning_rate=3e-3,
                warmup_ratio=0.0, progress=False, max_length=128, lr_schedule="constant")
    base.update(kw)
    return KTOConfig(**base)


def independent_logp(model, tokenizer, prompt_ids, response_ids) -> float:
    """Summed log-prob of the response after the prompt, from a plain forward of the concatenation."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(ids).logits.float().log_softmax(-1)[0]
    P = len(prompt_ids)
    return float(sum(logits[P - 1 + j, t] for j, t in enumerate(response_ids)))


def test_mismatched_pairs_never_pair_an_example_with_itself(smol_tokenizer):
    cfg = KTOConfig(max_length=128)
    examples = encode_split(cfg, smol_tokenizer, records(TOPICS), "r", DataReport())
    encoder = prompt_encoder(smol_tokenizer)
    own = {tuple(e.response_ids) for e in examples}
    assert all(e.kl_response_ids != e.response_ids and tuple(e.kl_response_ids) in own for e in examples)
    assert sorted(map(tuple, (e.kl_response_ids for e in examples))) == sorted(map(tuple, (e.response_ids for e in examples)))
    assert examples[0].prompt_ids == encoder.prompt("Tell me about cats.")
    # a mismatched response longer than the room its prompt leaves is cut to fit max_length
    long = [BinaryRecord("Hi?", "Yes " * 40, True), BinaryRecord("Tell me everything about " + "owls " * 20, "No.", False)]
    cut = encode_split(KTOConfig(max_length=80), smol_tokenizer, long, "r", DataReport())
    assert cut[1].kl_response_ids == cut[0].response_ids[: 80 - len(cut[1].prompt_ids)]
    assert len(cut[1].kl_response_ids) < len(cut[0].response_ids)
    with pytest.raises(ValueError, match="1 example; KTO needs at least 2"):
        encode_split(cfg, smol_tokenizer, long[:1], "r", DataReport())


def test_reference_point_and_reference_log_probs_are_the_papers(tmp_path, tiny_policy_dir, smol_tokenizer):
    session = train_kto(kto_cfg(tmp_path, tiny_policy_dir, max_steps=2), train_records=records(TOPICS[:4]))
    initial = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    trained = AutoModelForCausalLM.from_pretrained(session.final_dir)
    # the cached reference log-probs are the frozen initial model's, for own and mismatched responses
    cached = load_file(session.run_dir / "reference_logps.safetensors")["train"]
    examples = session.train_examples
    want = torch.tensor([[independent_logp(initial, smol_tokenizer, e.prompt_ids, r) for r in e.responses]
                         for e in examples])
    assert torch.allclose(cached, want, atol=1e-3)
    # the trained policy differs from the reference; the loss's z0 is max(0, mean KL of mismatched pairs)
    algorithm = KTOAlgorithm(session.cfg, trained, examples, [], 2, {"train": cached})
    batch = KTOBatch([0, 3, 5])
    per_example, metrics = algorithm.loss(SequenceScorer(trained), batch)
    policy_kl = [independent_logp(trained, smol_tokenizer, examples[i].prompt_ids, examples[i].kl_response_ids)
                 for i in batch.indices]
    z0 = max(0.0, sum(p - float(cached[i, 1]) for p, i in zip(policy_kl, batch.indices)) / 3)
    assert z0 > 1e-3  # training moved the policy: the test can tell z0 from 0
    assert float(metrics["kl"]) == pytest.approx(z0, abs=1e-3)
    # the loss is the paper's with that z0, and z0 carries no gradient
    r = torch.tensor([independent_logp(trained, smol_tokenizer, examples[i].prompt_ids, examples[i].response_ids)
                      - float(cached[i, 0]) for i in batch.indices])
    labels = [examples[i].desirable for i in batch.indices]
    want_loss = [torch.sigmoid(-0.1 * (x - z0)) if d else torch.sigmoid(-0.1 * (z0 - x)) for x, d in zip(r, labels)]
    assert torch.allclose(per_example.detach(), torch.stack(want_loss).float(), atol=1e-4)
    trained.zero_grad()
    _, m = algorithm.loss(SequenceScorer(trained), batch)
    assert not m["kl"].requires_grad


def test_kto_raises_held_out_desirable_over_undesirable_and_moves_weights(tmp_path, tiny_policy_dir):
    session = train_kto(kto_cfg(tmp_path, tiny_policy_dir), train_records=records(TOPICS),
                        eval_records=records(HELD_OUT))
    final = session.summary["final_eval"]
    # at the start the policy is the reference: every implied reward is 0
    assert final["rewards/chosen"] > 0 > final["rewards/rejected"]
    assert final["rewards/margins"] > 0.5
    losses = [r["loss"] for r in session.state.history if "loss" in r and "eval/loss" not in r]
    assert losses[-1] < losses[0]
    trained = load_file(session.final_dir / "model.safetensors")
    start = load_file(tiny_policy_dir / "model.safetensors")
    assert max(float((trained[k] - start[k]).abs().max()) for k in start) > 1e-2


def test_balance_warns_outside_the_papers_range():
    def examples(n_d, n_u):
        return [type("E", (), {"desirable": i < n_d})() for i in range(n_d + n_u)]

    lines = balance_lines(KTOConfig(), examples(3, 9))
    assert lines[0] == "desirable:undesirable examples = 3:9"
    assert "= 0.333" in lines[1] and "warning: outside the paper's recommended [1, 4/3]" in lines[2]
    assert "desirable_weight: 3 " in lines[2]
    assert len(balance_lines(KTOConfig(desirable_weight=3.5), examples(3, 9))) == 2  # 3.5*3/9 = 1.17: fine
    assert len(balance_lines(KTOConfig(), examples(5, 5))) == 2


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def rows(topics):
    return [{"prompt": r.prompt, "completion": r.response, "label": "thumbs_up" if r.desirable else "thumbs_down"}
            for r in records(topics)]


def test_cli_trains_and_dry_run_writes_nothing(tmp_path, tiny_policy_dir, capsys):
    data = write_jsonl(tmp_path / "kto.jsonl", rows(TOPICS[:3]) + rows(TOPICS[3:6])[1::2])  # 3 good : 6 bad
    base = ["train", "kto", "--model", str(tiny_policy_dir), "--train-data", str(data), "--max-steps", "2",
            "--batch-size", "4", "--max-length", "128", "--progress", "false"]
    assert main(base + ["--output-dir", str(tmp_path / "dry"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "alignlab dry run: kto" in out and "desirable:undesirable examples = 3:6" in out
    assert "warning: outside the paper's recommended [1, 4/3]" in out and "mismatched pair" in out
    assert not (tmp_path / "dry").exists()
    assert main(base + ["--output-dir", str(tmp_path / "run"), "--desirable-weight", "2.5"]) == 0
    out = capsys.readouterr().out
    assert "alignlab: kto done: 2 steps" in out and "examples/s" in out
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Hi?", "completion": "Yo."}, "bad.jsonl, line 2, field 'label'"),
    ({"prompt": "Hi?", "completion": "Yo.", "label": "meh"}, "bad.jsonl, line 2, field 'label'"),
])
def test_bad_data_is_one_line_naming_file_line_and_field(row, message, tmp_path, tiny_policy_dir, capsys):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Ok?", "completion": "Ok.", "label": True}, row])
    code = main(["train", "kto", "--model", str(tiny_policy_dir), "--train-data", str(data),
                 "--output-dir", str(tmp_path / "run"), "--progress", "false"])
    err = capsys.readouterr().err
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_pairs_split_in_two_and_rankings_are_refused(tmp_path, tiny_policy_dir, smol_tokenizer, capsys):
    from alignlab.data.records import PairwiseRecord
    from alignlab.train.kto import binary_records

    report = DataReport()
    split = binary_records("p", [PairwiseRecord("Hi?", "Yo.", "No."), BinaryRecord("Ok?", "Ok.", False)], "r", report)
    assert [(r.response, r.desirable) for r in split] == [("Yo.", True), ("No.", False), ("Ok.", False)]
    assert report["pairs split into a desirable and an undesirable example"] == 1
    data = write_jsonl(tmp_path / "ranks.jsonl", [{"prompt": "Hi?", "responses": ["Yo.", "No."]}])
    code = main(["train", "kto", "--model", str(tiny_policy_dir), "--train-data", str(data),
                 "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code != 0 and "KTO needs thumbs-up/down records" in err and "alignlab train listwise" in err


def test_resume_ends_at_the_same_weights(tmp_path, tiny_policy_dir):
    data = records(TOPICS[:5])  # 10 examples, batch 4: the resumed run crosses an epoch boundary
    full = train_kto(kto_cfg(tmp_path, tiny_policy_dir, "full", max_steps=4), train_records=data)
    part = train_kto(kto_cfg(tmp_path, tiny_policy_dir, "part", max_steps=2), train_records=data)
    resumed = train_kto(kto_cfg(tmp_path, tiny_policy_dir, "part", max_steps=4, resume="latest"), train_records=data)
    assert part.state.step == 2 and resumed.state.step == 4 and resumed.state.epoch == full.state.epoch == 1
    wf, wr = load_file(full.final_dir / "model.safetensors"), load_file(resumed.final_dir / "model.safetensors")
    assert max(float((wf[k] - wr[k]).abs().max()) for k in wf) < 1e-6
