"""The loaders: every format detected and parsed to hand-checked records, every file type, and
every bad input reported with its file, line and field (or skipped, counted and written out)."""

from __future__ import annotations

import json

import pytest

from alignlab.data import (
    BinaryRecord,
    CritiqueRecord,
    DataError,
    PairwiseRecord,
    RankingRecord,
    RatingRecord,
    load_records,
)


def jsonl(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# --- formats --------------------------------------------------------------------------------------


def test_pairwise_strings_with_margin_annotator_meta_and_provenance(tmp_path):
    path = jsonl(tmp_path, [
        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away", "margin": 2, "annotator_id": 7, "topic": "greet"},
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    ])
    result = load_records(path)
    assert result.format == "pairwise"
    first, second = result.records
    assert (first.prompt, first.chosen, first.rejected, first.margin, first.annotator) == ("Hi", "Hello!", "Go away",
                                                                                           2.0, "7")
    assert first.meta == {"topic": "greet", "file": path, "line": 1, "location": "line 1"}
    assert second.margin is None and second.meta["line"] == 2
    assert result.report["rows read"] == 2 and result.report["valid rows (pairwise)"] == 2


def test_pairwise_chat_lists_with_explicit_prompt(tmp_path):
    prompt = [{"role": "system", "content": "Be brief."}, user("Capital of France?")]
    path = jsonl(tmp_path, [
        {"prompt": prompt, "chosen": [assistant("Paris.")], "rejected": [assistant("Lyon.")]},
        # chosen repeating the prompt turns is accepted too
        {"prompt": prompt, "chosen": prompt + [assistant("Paris.")], "rejected": "Lyon."},
    ])
    for record in load_records(path).records:
        assert (record.prompt, record.chosen, record.rejected) == (prompt, "Paris.", "Lyon.")


def test_pairwise_implicit_prompt_splits_the_common_prefix(tmp_path):
    history = [user("Hi"), assistant("Hello, how can I help?"), user("Name a fruit.")]
    path = jsonl(tmp_path, [{"chosen": history + [assistant("Apple.")], "rejected": history + [assistant("Rock.")]}])
    (record,) = load_records(path).records
    assert record.prompt == history and (record.chosen, record.rejected) == ("Apple.", "Rock.")


def test_implicit_prompt_with_several_turns_left_is_an_error(tmp_path):
    path = jsonl(tmp_path, [{"chosen": [user("Hi"), assistant("A"), user("more"), assistant("B")],
                             "rejected": [user("Hi"), assistant("C")]}])
    with pytest.raises(DataError, match=r"line 1, field 'chosen': expected one assistant message after the prompt"):
        load_records(path)


HH = [
    {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: It is 4.",
     "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: It is 5."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Tell a joke\n\nAssistant:  Why did the chicken...",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Tell a joke\n\nAssistant: No."},
]


def test_hh_transcripts_split_at_the_last_shared_assistant_turn(tmp_path):
    result = load_records(jsonl(tmp_path, HH))
    assert result.format == "hh"
    first, second = result.records
    assert first.prompt == [user("What is 2+2?")]
    assert (first.chosen, first.rejected) == ("It is 4.", "It is 5.")
    assert second.prompt == [user("Hi"), assistant("Hello"), user("Tell a joke")]
    # exactly one leading space is removed
    assert (second.chosen, second.rejected) == (" Why did the chicken...", "No.")


def test_hh_transcripts_without_a_shared_prompt_are_errors_or_counted(tmp_path):
    rows = HH + [{"chosen": "\n\nHuman: A?\n\nAssistant: yes", "rejected": "\n\nHuman: B?\n\nAssistant: no"}]
    path = jsonl(tmp_path, rows)
    with pytest.raises(DataError, match=r"data.jsonl, line 3, field 'rejected': chosen and rejected transcripts"):
        load_records(path)
    result = load_records(path, skip_invalid=True)
    assert len(result.records) == 2 and result.report["skipped invalid: HH transcripts share no prompt"] == 1


UF = {
    "instruction": "Write a haiku.", "source": "evol_instruct",
    "completions": [
        {"response": "A", "overall_score": 6.5},
        {"response": "B", "overall_score": 8.0},
        {"response": "C", "overall_score": "3"},  # UltraFeedback stores some scores as strings
        {"response": "D", "overall_score": 7.0},
    ],
}


def test_ultrafeedback_best_vs_worst(tmp_path):
    result = load_records(jsonl(tmp_path, [UF]))
    assert result.format == "ultrafeedback"
    (pair,) = result.records
    assert (pair.prompt, pair.chosen, pair.rejected, pair.margin) == ("Write a haiku.", "B", "C", 5.0)
    assert pair.meta["source"] == "evol_instruct"  # a dataset column, not the provenance
    assert result.report["converted ratings to pairs (best_vs_worst)"] == 1


def test_ultrafeedback_best_vs_random_draws_among_strictly_lower_scores(tmp_path):
    path = jsonl(tmp_path, [UF] * 30)
    rejected = [p.rejected for p in load_records(path, pairing="best_vs_random", seed=3).records]
    assert set(rejected) == {"A", "C", "D"}  # never the best, every lower one drawn over 30 rows
    again = [p.rejected for p in load_records(path, pairing="best_vs_random", seed=3).records]
    other = [p.rejected for p in load_records(path, pairing="best_vs_random", seed=4).records]
    assert again == rejected and other != rejected
    margins = {p.rejected: p.margin for p in load_records(path, pairing="best_vs_random").records}
    assert margins == {"A": 1.5, "C": 5.0, "D": 1.0}


def test_best_vs_random_never_picks_a_response_tied_with_the_best(tmp_path):
    row = {"prompt": "p", "responses": ["x", "y", "z"], "scores": [5, 5, 1]}
    pairs = load_records(jsonl(tmp_path, [row] * 10), pairing="best_vs_random").records
    assert {(p.chosen, p.rejected, p.margin) for p in pairs} == {("x", "z", 4.0)}


def test_ratings_columns_attribute_ratings_ties_and_native_records(tmp_path):
    rows = [
        {"prompt": "p1", "responses": ["a", "b"], "scores": [{"helpful": 2, "honest": 4}, {"helpful": 5, "honest": 5}]},
        {"prompt": "p2", "responses": ["a", "b", "c"], "scores": [3, 3, 3]},
        {"prompt": "p3", "completions": [{"text": "only", "rating": 1}]},
    ]
    path = jsonl(tmp_path, rows)
    result = load_records(path)
    (pair,) = result.records
    assert (pair.chosen, pair.rejected, pair.margin) == ("b", "a", 2.0)  # mean 5 vs mean 3
    assert result.report["no pair: all responses rated equal"] == 1
    assert result.report["no pair: fewer than two responses"] == 1
    native = load_records(path, to_pairs=False).records
    assert all(isinstance(r, RatingRecord) for r in native)
    assert native[0].ratings == [{"helpful": 2.0, "honest": 4.0}, {"helpful": 5.0, "honest": 5.0}]


def test_ranking_formats_and_pairs(tmp_path):
    rows = [
        {"prompt": "p", "responses": ["best", "mid", "worst"]},
        {"prompt": "q", "responses": ["x", "y", "z"], "ranking": [2, 3, 1]},
        {"prompt": "r", "ranking": ["first", "second"]},
    ]
    path = jsonl(tmp_path, rows)
    native = load_records(path, to_pairs=False)
    assert native.format == "ranking"
    assert [r.responses for r in native.records] == [["best", "mid", "worst"], ["z", "x", "y"], ["first", "second"]]
    assert all(isinstance(r, RankingRecord) for r in native.records)
    pairs = load_records(path).records
    assert [(p.chosen, p.rejected, p.margin) for p in pairs] == [("best", "worst", 2.0), ("z", "y", 2.0),
                                                                ("first", "second", 1.0)]
    randoms = load_records(jsonl(tmp_path, [rows[0]] * 20, "r.jsonl"), pairing="best_vs_random").records
    assert {(p.rejected, p.margin) for p in randoms} == {("mid", 1.0), ("worst", 2.0)}


def test_tied_ranks_are_an_error(tmp_path):
    path = jsonl(tmp_path, [{"prompt": "p", "responses": ["a", "b"], "ranking": [1, 1]}])
    with pytest.raises(DataError, match="line 1, field 'ranking': tied ranks"):
        load_records(path)


def test_binary_labels(tmp_path):
    labels = [True, 0, 1, "good", "bad", "thumbs_up", "Thumbs Down", "\U0001f44d"]
    rows = [{"prompt": "p", "completion": f"c{i}", "label": label} for i, label in enumerate(labels)]
    result = load_records(jsonl(tmp_path, rows + [{"prompt": "p", "response": "r", "label": False}]))
    assert result.format == "binary" and all(isinstance(r, BinaryRecord) for r in result.records)
    assert [r.desirable for r in result.records] == [True, False, True, True, False, True, False, True, False]
    assert result.records[-1].response == "r"
    with pytest.raises(DataError, match=r"line 1, field 'label': expected true/false.*got 'meh'"):
        load_records(jsonl(tmp_path, [{"prompt": "p", "completion": "c", "label": "meh"}], "bad.jsonl"))


def test_critique(tmp_path):
    rows = [{"prompt": "p", "response": "r", "critique": "too short", "refinement": "a longer r"},
            {"prompt": "p", "response": "r", "critique": "fine"}]
    result = load_records(jsonl(tmp_path, rows))
    assert result.format == "critique"
    assert result.records == [
        CritiqueRecord("p", "r", "too short", "a longer r", meta=result.records[0].meta),
        CritiqueRecord("p", "r", "fine", None, meta=result.records[1].meta),
    ]


def test_columns_mapping_and_errors_name_the_users_column(tmp_path):
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    path = jsonl(tmp_path, [{"question": "q", "good": "g", "bad": "b"}, {"question": "q", "good": 3, "bad": "b"}])
    with pytest.raises(DataError, match=r"line 2, field 'good': expected a string or a message list, got int"):
        load_records(path, columns=columns)
    result = load_records(path, columns=columns, skip_invalid=True)
    assert [(r.prompt, r.chosen, r.rejected) for r in result.records] == [("q", "g", "b")]
    with pytest.raises(ValueError, match="unknown alignlab field"):
        load_records(path, columns={"question": "prompt"})


def test_forced_format_and_unknown_options(tmp_path):
    path = jsonl(tmp_path, [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    with pytest.raises(DataError, match=r"line 1, field 'completion': required field is missing \(or 'response'\)"):
        load_records(path, format="binary")
    with pytest.raises(ValueError, match="unknown data format"):
        load_records(path, format="csv")
    with pytest.raises(ValueError, match="pairing must be one of"):
        load_records(path, pairing="best_vs_median")


def test_undetectable_format_lists_keys_and_formats(tmp_path):
    path = jsonl(tmp_path, [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"data.jsonl, line 1: cannot tell the data format from the keys "
                                        r"\['answer', 'question'\]. Known formats: pairwise.*critique"):
        load_records(path)
    with pytest.raises(DataError, match="cannot tell"):
        load_records(path, skip_invalid=True)


# --- file types -----------------------------------------------------------------------------------

ROWS = [{"prompt": "p1", "chosen": "c1", "rejected": "r1"}, {"prompt": "p2", "chosen": "c2", "rejected": "r2"}]


def _triples(result):
    return [(r.prompt, r.chosen, r.rejected) for r in result.records]


def test_json_list_data_key_and_json_lines_named_json(tmp_path):
    for i, blob in enumerate([json.dumps(ROWS), json.dumps({"data": ROWS}), "\n".join(map(json.dumps, ROWS))]):
        path = tmp_path / f"d{i}.json"
        path.write_text(blob)
        assert _triples(load_records(str(path))) == [("p1", "c1", "r1"), ("p2", "c2", "r2")]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([ROWS[0], {"prompt": "p", "chosen": "c", "rejected": ""}]))
    with pytest.raises(DataError, match=r"bad.json, item 1, field 'rejected': empty response"):
        load_records(str(bad))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"rows": ROWS}))
    with pytest.raises(DataError, match=r"wrong.json: expected a list of objects or \{\"data\": \[...\]\}"):
        load_records(str(wrong))


def test_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS + [{"prompt": "p3", "chosen": None, "rejected": "r3"}]), path)
    with pytest.raises(DataError, match=r"d.parquet, row 2, field 'chosen': required field is missing"):
        load_records(str(path))
    assert _triples(load_records(str(path), skip_invalid=True)) == [("p1", "c1", "r1"), ("p2", "c2", "r2")]


def test_datasets_folder_round_trip(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert _triples(load_records(str(tmp_path / "ds"))) == [("p1", "c1", "r1"), ("p2", "c2", "r2")]
    DatasetDict({"train": Dataset.from_list(ROWS[:1]), "test": Dataset.from_list(ROWS[1:])}).save_to_disk(
        str(tmp_path / "dd"))
    assert _triples(load_records(str(tmp_path / "dd"))) == [("p1", "c1", "r1")]
    assert _triples(load_records(str(tmp_path / "dd" / "test"))) == [("p2", "c2", "r2")]
    DatasetDict({"a": Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "nosplit"))
    with pytest.raises(DataError, match=r"splits \['a'\] and no 'train' split"):
        load_records(str(tmp_path / "nosplit"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="save_to_disk"):
        load_records(str(tmp_path / "empty"))


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found: .*nope.jsonl"):
        load_records(str(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError, match="local files only"):
        load_records("Anthropic/hh-rlhf")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown file type '.csv'"):
        load_records(str(tmp_path / "d.csv"))


# --- bad rows -------------------------------------------------------------------------------------

BAD = [
    ('{"prompt": "p", "chosen": "c", "rejected": "r"', r"line 2: malformed JSON: Expecting ',' delimiter",
     "malformed JSON"),
    ({"prompt": "p", "chosen": "c"}, r"line 2, field 'rejected': required field is missing \(the row has: prompt, "
                                     r"chosen\)", "missing field 'rejected'"),
    ({"prompt": "p", "chosen": ["c"], "rejected": "r"}, r"line 2, field 'chosen': message 0: expected \{'role'",
     "wrong type in 'chosen'"),
    ({"prompt": "p", "chosen": 5, "rejected": "r"},
     r"line 2, field 'chosen': expected a string or a message list, got int", "wrong type in 'chosen'"),
    ({"prompt": "  ", "chosen": "c", "rejected": "r"}, r"line 2, field 'prompt': empty prompt", "empty prompt"),
    ({"prompt": [user("")], "chosen": "c", "rejected": "r"}, r"line 2, field 'prompt': empty prompt", "empty prompt"),
    ({"prompt": "p", "chosen": "c", "rejected": "\n"}, r"line 2, field 'rejected': empty response", "empty response"),
    ({"prompt": "p", "chosen": "c", "rejected": "r", "margin": "big"}, r"line 2, field 'margin': expected a number",
     "bad value in 'margin'"),
    ('[1, 2]', r"line 2: expected a JSON object per line, got list", "not an object"),
]


@pytest.mark.parametrize("bad,message,reason", BAD)
def test_each_bad_row_names_file_line_field_or_is_skipped(tmp_path, bad, message, reason):
    path = jsonl(tmp_path, [ROWS[0], bad, ROWS[1]])
    with pytest.raises(DataError, match="data.jsonl, " + message):
        load_records(path)
    rejects = tmp_path / "run" / "rejects.jsonl"
    result = load_records(path, skip_invalid=True, rejects_path=str(rejects))
    assert _triples(result) == [("p1", "c1", "r1"), ("p2", "c2", "r2")]
    assert result.report[f"skipped invalid: {reason}"] == 1 and result.report["rows read"] == 3
    (line,) = rejects.read_text().splitlines()
    written = json.loads(line)
    assert "data.jsonl, line 2" in written.pop("_error")
    assert written == (bad if isinstance(bad, dict) else {"_raw": json.loads(bad) if bad.startswith("[") else bad})


def test_non_utf8_line_is_named(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "caf\xe9", "chosen": "c", '
                     b'"rejected": "r"}\n')
    with pytest.raises(DataError, match=r"data.jsonl, line 2: not valid UTF-8 \(byte 0xe9"):
        load_records(str(path))
    result = load_records(str(path), skip_invalid=True)
    assert len(result.records) == 1 and result.report["skipped invalid: not valid UTF-8"] == 1
    as_json = tmp_path / "data.json"
    as_json.write_bytes(b'[\n{"prompt": "p", "chosen": "c", "rejected": "r"},\n{"prompt": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"data.json, line 3: not valid UTF-8"):
        load_records(str(as_json))


def test_identical_and_duplicate_pairs_are_kept_and_counted(tmp_path):
    same = {"prompt": "p", "chosen": "same", "rejected": "same"}
    result = load_records(jsonl(tmp_path, [ROWS[0], same, ROWS[0], ROWS[0], ""]))
    assert len(result.records) == 4
    assert result.report["chosen == rejected (kept; no preference signal)"] == 1
    assert result.report["duplicate pairs (kept)"] == 2
    assert result.report["rows read"] == 4  # the blank line is not a row


def test_all_records_are_the_native_types(tmp_path):
    assert isinstance(load_records(jsonl(tmp_path, ROWS)).records[0], PairwiseRecord)
