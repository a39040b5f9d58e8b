"""`alignlab train sft`: the loss mask covers exactly the assistant tokens of every turn (two chat
templates), packing gives the padded layout's loss, a tiny run lowers the held-out loss, resume is
exact, and the command line runs, dry-runs and rejects bad data in one line."""

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from alignlab.cli import main
from alignlab.data.demonstrations import demonstration
from alignlab.data.errors import DataError
from alignlab.data.sft import encode_conversation, encode_sft
from alignlab.data.tokenize import encode_prompt_response
from alignlab.losses.sft import sft_loss
from alignlab.models.logprobs import SequenceScorer
from alignlab.train.sft import SFTAlgorithm, SFTConfig, train_sft
from alignlab.train.sft_data import pack_examples, pad_examples
from helpers import make_tiny_lm

# A Llama-2-style template: no role headers, the system turn folded into the first user turn,
# contents trimmed, the reply after " [/INST] " closed by " " + eos, nothing between turns.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set sys = '<<SYS>>\\n' + messages[0]['content'] | trim + "
    "'\\n<</SYS>>\\n\\n' %}{% set messages = messages[1:] %}{% else %}{% set sys = '' %}{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (sys if loop.first else '') + message['content'] | trim + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris, on the Seine."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
    {"role": "user", "content": "Thanks! Which is larger?"},
    {"role": "assistant", "content": "Paris has more people within its city limits."},
]


def expected_mask(tokenizer, messages):
    """Independently of alignlab: render the whole conversation once, tokenize it with offsets,
    and mark the tokens that overlap an assistant turn's text or the end-of-turn token after it."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans, cursor = [], 0
    for m in messages:
        if m["role"] != "assistant":
            continue
        start = text.index(m["content"].strip(), cursor)
        end = text.index(tokenizer.eos_token, start) + len(tokenizer.eos_token)
        spans.append((start, end))
        cursor = end
    mask = [any(a < e and b > s for s, e in spans) for a, b in enc["offset_mapping"]]
    return enc["input_ids"], mask


@pytest.fixture(scope="module")
def llama2_tokenizer(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = LLAMA2_TEMPLATE
    return tokenizer


@pytest.mark.parametrize("template", ["smollm2", "llama2"])
@pytest.mark.parametrize("turns", [3, 2, 1])
def test_loss_mask_is_exactly_the_assistant_tokens_of_every_turn(template, turns, smol_tokenizer, llama2_tokenizer):
    tokenizer = smol_tokenizer if template == "smollm2" else llama2_tokenizer
    messages = CONVERSATION[: 1 + 2 * turns]
    ids, mask = encode_conversation(tokenizer, messages)
    full_ids, want = expected_mask(tokenizer, messages)
    # the same tokens as the whole conversation rendered at once, minus trailing turn formatting
    assert ids == full_ids[: len(ids)] and not any(want[len(ids):])
    assert mask == want[: len(ids)]
    assert tokenizer.decode([t for t, m in zip(ids, mask) if m]).count(tokenizer.eos_token) == turns
    if template == "llama2":  # a different layout indeed: no role headers, eos right after each reply
        assert "<|im_start|>assistant" not in tokenizer.decode(ids) and "[/INST]" in tokenizer.decode(ids)
    all_ids, all_mask = encode_conversation(tokenizer, messages, assistant_only=False)
    assert all_ids[: len(ids)] == ids and all_mask == [False] + [True] * (len(all_ids) - 1)


def test_prompt_completion_trains_the_completion_only(smol_tokenizer, llama2_tokenizer):
    prompt = CONVERSATION[:4]  # holds an earlier assistant turn: context here, not a target
    demo = demonstration({"prompt": prompt, "completion": "Rome."}, {"file": "f", "location": "line 1"})
    for tokenizer in (smol_tokenizer, llama2_tokenizer):
        (example,), _ = encode_sft(tokenizer, [demo], max_length=512)
        full_ids, want = expected_mask(tokenizer, prompt + [{"role": "assistant", "content": "Rome."}])
        last = max(i for i, m in enumerate(want) if m and not want[i - 1])  # the last turn's first target
        assert example.input_ids == full_ids[: len(example.input_ids)]
        assert example.loss_mask == [w and i >= last for i, w in enumerate(want[: len(example.input_ids)])]
    # with a template that writes the reply right after its header (SmolLM2), the ids are those of
    # the preference trainers' encoding of the same prompt and response
    (example,), _ = encode_sft(smol_tokenizer, [demo], max_length=512)
    prompt_ids, response_ids = encode_prompt_response(smol_tokenizer, prompt, "Rome.")
    assert example.input_ids == prompt_ids + response_ids
    assert example.loss_mask == [False] * len(prompt_ids) + [True] * len(response_ids)


def test_sft_loss_is_the_token_mean_nll_by_hand():
    per_sequence, _ = sft_loss(torch.tensor([-2.0, -6.0]), torch.tensor([1, 3]))
    # two sequences: one target token with log-prob -2, three with log-probs summing to -6
    assert per_sequence.tolist() == [2.0, 6.0] and float(per_sequence.sum() / 4) == 2.0
    with pytest.raises(ValueError, match=r"both be \(B,\)"):
        sft_loss(torch.zeros(2), torch.zeros(3))


def examples(tokenizer, n=6):
    rows = [{"messages": CONVERSATION[: 1 + 2 * (1 + i % 3)]} for i in range(n // 2)]
    rows += [{"prompt": f"Say {w}.", "completion": f"{w} {w} {w}."} for w in ["tea", "rain", "owls"][: n - n // 2]]
    demos = [demonstration(r, {"file": "f", "location": f"line {i}"}) for i, r in enumerate(rows)]
    return encode_sft(tokenizer, demos, max_length=256)[0]


def test_packing_gives_the_padded_layouts_log_probs_and_loss(smol_tokenizer):
    model = make_tiny_lm(len(smol_tokenizer)).eval()
    batch = examples(smol_tokenizer)
    packed, padded = pack_examples(batch, pad_token_id=2), pad_examples(batch, pad_token_id=2)
    assert packed.input_ids.numel() < padded.input_ids.numel()  # fewer positions: less padding
    assert packed.input_ids.shape[0] < len(batch)  # rows hold several sequences that must not see each other
    assert torch.equal(packed.lengths, padded.lengths) and int(packed.lengths.sum()) == sum(e.num_targets for e in batch)
    assert len(packed.score_targets) == len(padded.score_targets) == int(padded.lengths.sum())
    with torch.no_grad():
        a, b = SequenceScorer(model)(packed), SequenceScorer(model)(padded)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    loss_a, loss_b = (sft_loss(x, packed.lengths)[0].sum() / packed.lengths.sum() for x in (a, b))
    torch.testing.assert_close(loss_a, loss_b, atol=1e-5, rtol=1e-6)


TOPICS = ["cats", "rain", "tea", "maps", "trains", "bread", "snow", "music"]


def sft_rows(topics):
    rows = []
    for i, t in enumerate(topics):
        if i % 2:
            rows.append({"prompt": f"Tell me about {t}.", "completion": f"I love {t}. {t} are great."})
        else:
            rows.append({"messages": [{"role": "user", "content": f"Hi, {t}?"},
                                      {"role": "assistant", "content": f"Yes, {t}!"},
                                      {"role": "user", "content": f"More on {t}?"},
                                      {"role": "assistant", "content": f"I love {t}. {t} are great."}]})
    return rows


def sft_cfg(tmp_path, model_dir, name="run", **kw):
    base = dict(model=str(model_dir), output_dir=str(tmp_path / name), batch_size=4, epochs=4.0, learning_rate=3e-3,
                warmup_ratio=0.0, progress=False, max_length=128, lr_schedule="constant")
    base.update(kw)
    return SFTConfig(**base)


def test_sft_lowers_the_held_out_loss_and_moves_the_weights(tmp_path, tiny_policy_dir, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    held_out = sft_rows(["owls", "boats", "lamps", "paint"])
    cfg = sft_cfg(tmp_path, tiny_policy_dir)
    before = SFTAlgorithm(cfg, None, [], examples_of(held_out, smol_tokenizer), 2)
    initial = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    before.model = initial
    with torch.no_grad():
        loss_before = before.evaluate(SequenceScorer(initial))["loss"]
    session = train_sft(cfg, train_records=sft_rows(TOPICS), eval_records=held_out)
    after = session.summary["final_eval"]
    assert after["loss"] < loss_before - 1.0  # the shared phrasing generalizes to unseen topics
    losses = [r["loss"] for r in session.state.history if "loss" in r and "eval/loss" not in r]
    assert losses[-1] < losses[0] - 1.0
    assert session.summary["tokens_seen"] == 4 * session.summary["target_tokens"]  # 4 epochs of target tokens
    trained = load_file(session.final_dir / "model.safetensors")
    start = load_file(tiny_policy_dir / "model.safetensors")
    assert max(float((trained[k] - start[k]).abs().max()) for k in start) > 1e-2
    assert json.loads((session.run_dir / "data_report.json").read_text())["encoded examples"] == 12  # train + eval


def examples_of(rows, tokenizer):
    demos = [demonstration(r, {"file": "f", "location": f"line {i}"}) for i, r in enumerate(rows)]
    return encode_sft(tokenizer, demos, max_length=128)[0]


def test_lora_sft_trains_only_the_adapter(tmp_path, tiny_policy_dir):
    session = train_sft(sft_cfg(tmp_path, tiny_policy_dir, lora=True, lora_r=4, learning_rate=2e-2, max_steps=3),
                        train_records=[(f"Tell me about {t}.", f"I love {t}.") for t in TOPICS])
    assert (session.final_dir / "adapter_config.json").is_file()
    losses = [r["loss"] for r in session.state.history if "loss" in r]
    assert losses[-1] < losses[0]


def test_resume_ends_at_the_same_weights(tmp_path, tiny_policy_dir):
    rows = sft_rows(TOPICS)
    full = train_sft(sft_cfg(tmp_path, tiny_policy_dir, "full", max_steps=4, batch_size=3), train_records=rows)
    part = train_sft(sft_cfg(tmp_path, tiny_policy_dir, "part", max_steps=2, batch_size=3), train_records=rows)
    assert part.state.step == 2
    resumed = train_sft(sft_cfg(tmp_path, tiny_policy_dir, "part", max_steps=4, batch_size=3, resume="latest"),
                        train_records=rows)
    assert resumed.state.step == 4 and resumed.state.epoch == full.state.epoch == 1  # crossed an epoch boundary
    wf, wr = load_file(full.final_dir / "model.safetensors"), load_file(resumed.final_dir / "model.safetensors")
    assert max(float((wf[k] - wr[k]).abs().max()) for k in wf) < 1e-6


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_cli_trains_and_dry_run_writes_nothing(tmp_path, tiny_policy_dir, capsys):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(TOPICS))
    base = ["train", "sft", "--model", str(tiny_policy_dir), "--train-data", str(data), "--max-steps", "2",
            "--batch-size", "4", "--max-length", "128", "--progress", "false"]
    assert main(base + ["--output-dir", str(tmp_path / "dry"), "--dry-run", "--lora", "true"]) == 0
    out = capsys.readouterr().out
    assert "alignlab dry run: sft" in out and "4 per device x 1 accumulation x 1 process(es) = 4 sequences" in out
    assert "reference policy: not used" in out and "lora: True  (user; default False)" in out
    assert not (tmp_path / "dry").exists()
    assert main(base + ["--output-dir", str(tmp_path / "run"), "--packing", "false"]) == 0
    out = capsys.readouterr().out
    assert "alignlab: sft done: 2 steps" in out and "target tokens/s" in out
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Hi?"}, "bad.jsonl, line 2, field 'response': expected the completion's non-empty text"),
    ({"prompt": "Hi?", "completion": "  "}, "bad.jsonl, line 2, field 'completion': expected non-empty text"),
    ({"messages": [{"role": "user", "content": "Hi?"}]},
     "bad.jsonl, line 2, field 'messages': no assistant turn to train on (roles: user)"),
    ({"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant"}]},
     "bad.jsonl, line 2, field 'messages': message 1 has no string 'role' and 'content'"),
    ('{"prompt": "Hi?", ', "bad.jsonl, line 2: not valid JSON"),
    ({"prompt": "Hi?", "completion": "Yo.", "messages": []}, "bad.jsonl, line 2: both 'prompt' and 'messages'"),
])
def test_bad_data_is_one_line_naming_file_line_and_field(row, message, tmp_path, tiny_policy_dir, capsys):
    data = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Ok?", "completion": "Ok."}, row])
    code = main(["train", "sft", "--model", str(tiny_policy_dir), "--train-data", str(data),
                 "--output-dir", str(tmp_path / "run"), "--progress", "false"])
    err = capsys.readouterr().err
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_settings_sft_does_not_read_are_refused(tmp_path, tiny_policy_dir, capsys):
    code = main(["train", "sft", "--model", str(tiny_policy_dir), "--train-data", "x.jsonl", "--pairing",
                 "best_vs_random", "--output-dir", str(tmp_path / "run")])
    assert code == 2 and "pairing is set but SFT training does not read it" in capsys.readouterr().err
    with pytest.raises(DataError, match="line 1, field 'messages'"):
        from alignlab.data.demonstrations import encode_demonstrations
        encode_demonstrations(None, [demonstration({"messages": CONVERSATION[:3]}, {"file": "p", "location": "line 1"})],
                              max_length=64)


def test_overlong_examples_error_are_cut_or_dropped_and_counted(smol_tokenizer):
    huge = "word " * 400_000  # 2 MB: known to be over-long from its length, never tokenized whole
    rows = [{"prompt": "Hi?", "completion": "Hello there, friend."}, {"prompt": "Hi?", "completion": huge},
            {"messages": [{"role": "user", "content": huge}, {"role": "assistant", "content": "Ok."}]},
            {"prompt": "Hi?", "completion": "word " * 60}]
    demos = [demonstration(r, {"file": "d.jsonl", "location": f"line {i + 1}"}) for i, r in enumerate(rows)]
    with pytest.raises(DataError, match=r"d.jsonl, line 2: 2000003 characters, more than max_length 48 tokens can hold"):
        encode_sft(smol_tokenizer, demos, max_length=48)
    with pytest.raises(DataError, match=r"d.jsonl, line 4: \d+ tokens, over max_length 48"):
        encode_sft(smol_tokenizer, demos[:1] + demos[3:], max_length=48)
    cut, report = encode_sft(smol_tokenizer, demos, max_length=48, truncation="truncate")
    assert [e.index for e in cut] == [0, 1, 3] and all(len(e.input_ids) <= 48 for e in cut)
    assert report.to_dict() == {"truncated: conversation end cut to max_length": 2,
                                "dropped: no target token left within max_length": 1, "encoded examples": 3}
    kept, report = encode_sft(smol_tokenizer, demos, max_length=48, truncation="drop")
    assert [e.index for e in kept] == [0] and report["dropped: longer than max_length"] == 3


def test_gradient_accumulation_is_an_exact_token_mean(tmp_path, tiny_policy_dir):
    """Two micro-batches of 2 sequences with different target counts make the same step as one
    batch of 4: the loss is averaged over the window's target tokens, not per micro-batch."""
    rows = sft_rows(TOPICS[:4])
    one = train_sft(sft_cfg(tmp_path, tiny_policy_dir, "one", max_steps=1, batch_size=4), train_records=rows)
    two = train_sft(sft_cfg(tmp_path, tiny_policy_dir, "two", max_steps=1, batch_size=2, grad_accum=2),
                    train_records=rows)
    assert one.state.history[0]["loss"] == pytest.approx(two.state.history[0]["loss"], rel=1e-5)
    # a per-token mean: near log(vocabulary) for a random model (a per-sequence sum would be ~20x that)
    assert one.state.history[0]["loss"] == pytest.approx(math.log(one.tokenizer.vocab_size), abs=0.3)
    wa, wb = load_file(one.final_dir / "model.safetensors"), load_file(two.final_dir / "model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    start = load_file(tiny_policy_dir / "model.safetensors")
    assert max(float((wa[k] - start[k]).abs().max()) for k in wa) > 1e-3
