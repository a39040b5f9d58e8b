"""`inspect_dataset` on small files: counts checked by hand, invalid rows listed, never fatal."""

from __future__ import annotations

import json

from alignlab.data.inspect import inspect_dataset, percentiles, render_inspect


def write(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


ROWS = [
    {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away"},
    {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away"},  # duplicate
    {"prompt": "Why?", "chosen": "Because", "rejected": "Because"},  # chosen == rejected
    {"prompt": "", "chosen": "a", "rejected": "b"},  # empty prompt
    {"prompt": "p", "chosen": 3, "rejected": "b"},  # wrong type
    "{not json",
    {"prompt": "x" * 50, "chosen": "y" * 10, "rejected": "z"},
]


def test_percentiles_are_nearest_rank():
    assert percentiles(list(range(1, 101))) == {"p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert percentiles([7]) == {"p50": 7, "p90": 7, "p99": 7, "max": 7}
    assert percentiles([]) == {}


def test_inspect_counts_characters_without_a_tokenizer(tmp_path):
    result = inspect_dataset(write(tmp_path, ROWS), None, max_length=40)
    assert result["format"] == "pairwise" and result["records"] == 4
    assert result["by_type"] == {"PairwiseRecord": 4}
    assert result["invalid"] == 3 and result["empty"] == 1
    assert result["invalid_by_reason"] == {"empty prompt": 1, "wrong type in 'chosen'": 1, "malformed JSON": 1}
    assert result["units"] == "characters"
    assert result["prompt_length"] == {"p50": 2, "p90": 50, "p99": 50, "max": 50}  # 2, 2, 4, 50
    assert result["response_length"]["max"] == 10
    assert result["over_max_length"] == 1  # 50 + 10 > 40
    assert result["duplicates"] == 1 and result["chosen_equals_rejected"] == 1 and result["pairwise"] == 4
    text = render_inspect(result)
    for expected in ("format                pairwise", "invalid rows skipped  3", "data.jsonl, line 5, field 'chosen'",
                     "longer than max_length 40 characters (prompt + longest response): 1",
                     "chosen == rejected (no signal): 1 (25.0% of pairs)", "rows read: 7"):
        assert expected in text, text


def test_inspect_counts_tokens_as_training_would(tmp_path, smol_tokenizer):
    from alignlab.data import encode_prompt_response

    result = inspect_dataset(write(tmp_path, ROWS[:1]), smol_tokenizer, max_length=1024)
    prompt_ids, response_ids = encode_prompt_response(smol_tokenizer, "Hi", "Go away")
    assert result["units"] == "tokens"
    assert result["prompt_length"]["max"] == len(prompt_ids)
    assert result["response_length"]["max"] == len(response_ids)
    tight = inspect_dataset(write(tmp_path, ROWS[:1]), smol_tokenizer, max_length=len(prompt_ids) + 2)
    assert tight["over_max_length"] == 1


def test_inspect_ratings_shows_the_pairs_they_make(tmp_path):
    rows = [{"prompt": "p", "responses": ["a", "b"], "scores": [1, 2]},
            {"prompt": "q", "responses": ["a", "b"], "scores": [2, 2]}]
    result = inspect_dataset(write(tmp_path, rows), None)
    assert result["format"] == "ultrafeedback" and result["by_type"] == {"RatingRecord": 2}
    assert result["pairs_best_vs_worst"] == 1
    assert "no pair: all responses rated equal: 1" in render_inspect(result)


def test_cli_data_inspect(tmp_path, capsys):
    from alignlab.cli import main

    assert main(["data", "inspect", write(tmp_path, ROWS[:3]), "--no-tokenizer"]) == 0
    # the report is for people, the exit code for scripts: any invalid row or no valid row fails
    assert main(["data", "inspect", write(tmp_path, ROWS), "--no-tokenizer", "--max-length", "40"]) == 1
    captured = capsys.readouterr()
    assert "invalid rows skipped  3" in captured.out and "records               4" in captured.out
    assert captured.err.strip().endswith("data.jsonl: 3 invalid row(s) (see the report above)")
    assert main(["data", "inspect", write(tmp_path, ROWS[3:6]), "--no-tokenizer"]) == 1
    captured = capsys.readouterr()
    assert "invalid rows skipped  3" in captured.out
    assert "3 invalid row(s) and no valid rows" in captured.err


def test_empty_data_file_says_it_is_empty(tmp_path, capsys):
    from alignlab.cli import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert main(["data", "inspect", str(empty), "--no-tokenizer"]) == 1
    assert "empty.jsonl: the data is empty: no rows to read" in capsys.readouterr().err
    assert main(["train", "dpo", "--train-data", str(empty), "--output-dir", str(tmp_path / "r"), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "empty.jsonl: the data is empty" in err and "see the data report above" not in err


def test_training_on_only_invalid_rows_says_what_the_report_found(tmp_path, tiny_policy_dir, capsys):
    from alignlab.cli import main

    data = write(tmp_path, ROWS[3:6])
    assert main(["train", "dpo", "--model", str(tiny_policy_dir), "--train-data", data, "--skip-invalid",
                 "--output-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "no training pairs left after loading and filtering (rows read: 3;" in err
    assert "skipped invalid: empty prompt: 1" in err and err.count("\n") == 1


def test_inspect_never_tokenizes_a_huge_line_whole(tmp_path, smol_tokenizer):
    """A text longer than max_length can hold by its characters alone is counted as over-long
    from its first (a prompt's last) (max_length + 1) x 81 characters."""
    from test_data_tokenize import CountingTokenizer

    huge = "word " * 600_000  # 3 MB
    path = write(tmp_path, [{"prompt": "Hi", "chosen": "Hello there.", "rejected": "Go."},
                            {"prompt": huge, "chosen": "Yes.", "rejected": huge}])
    tok = CountingTokenizer(smol_tokenizer)
    result = inspect_dataset(path, tok, max_length=256)
    assert result["over_max_length"] == 1 and result["lengths_capped"] == 2
    assert result["prompt_length"]["max"] > 256 and tok.longest <= 257 * 81 < len(huge)
    assert "2 text(s) too long to count in full" in render_inspect(result)
