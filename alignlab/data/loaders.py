"""Load feedback records from local files: JSON Lines, JSON, parquet, or a saved `datasets` folder.

`load_records` reads rows, renames the user's columns, detects the format from the first usable
row (or takes the one forced), parses each row into a record (see `formats.py`) and, by default,
turns ratings and rankings into pairs (see `pairing.py`). Every outcome is counted in the
returned `DataReport`; each invalid row is an error naming file, line and field, or with
`skip_invalid` is counted and written, with its error, to `rejects_path`.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from alignlab.data.errors import DataError, record_where
from alignlab.data.formats import FORMATS, KNOWN_FIELDS, Row, RowError, detect_format
from alignlab.data.pairing import PAIRINGS, to_pairs as ratings_to_pairs
from alignlab.data.records import PairwiseRecord
from alignlab.data.report import DataReport

FILE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
PROVENANCE = ("file", "line", "location")  # meta keys a loader sets on every record
SAME_PAIR = "chosen == rejected (kept; no preference signal)"
DUPLICATE_PAIR = "duplicate pairs (kept)"


@dataclass
class LoadResult:
    records: list
    report: DataReport
    format: str  # the data format detected or forced; "unknown" when no row could be read


@dataclass
class RawRow:
    location: str  # "line 7" (1-based), "item 3" or "row 5" (0-based)
    number: int
    data: dict[str, Any] | None  # None when the row itself could not be read
    raw: Any  # what the rejects file gets
    error: RowError | None = None


# --- reading ------------------------------------------------------------------------------------


def _jsonl_rows(lines: Iterable[bytes | str]) -> Iterator[RawRow]:
    for n, line in enumerate(lines, 1):
        where = f"line {n}"
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawRow(where, n, None, {"_raw": line.decode("utf-8", "replace")}, RowError(
                    None, "not valid UTF-8",
                    f"not valid UTF-8 (byte 0x{line[exc.start]:02x} at byte {exc.start + 1}); save the file as UTF-8"))
                continue
        if n == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RawRow(where, n, None, {"_raw": line.rstrip("\r\n")},
                         RowError(None, "malformed JSON", f"malformed JSON: {exc.msg} (column {exc.colno})"))
            continue
        yield _object_row(where, n, data, "a JSON object per line")


def _object_row(where: str, n: int, data: Any, expected: str) -> RawRow:
    if isinstance(data, dict):
        return RawRow(where, n, data, data)
    got = "null" if data is None else type(data).__name__
    return RawRow(where, n, None, {"_raw": data}, RowError(None, "not an object", f"expected {expected}, got {got}"))


def _json_rows(path: Path, file: str) -> Iterator[RawRow]:
    blob = path.read_bytes()
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = blob[: exc.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 (byte 0x{blob[exc.start]:02x}); save the file as UTF-8",
                        file=file, location=f"line {line}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):  # JSON Lines named .json
            yield from _jsonl_rows(text.split("\n"))
            return
        raise DataError(f"malformed JSON: {exc.msg} (column {exc.colno})", file=file,
                        location=f"line {exc.lineno}") from None
    items = data.get("data") if isinstance(data, dict) else data
    if not isinstance(items, list):
        got = f"an object with keys {sorted(data)}" if isinstance(data, dict) else type(data).__name__
        raise DataError(f'expected a list of objects or {{"data": [...]}}, got {got}', file=file)
    for i, item in enumerate(items):
        yield _object_row(f"item {i}", i, item, "an object")


def _parquet_rows(path: Path, file: str) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"not a readable parquet file ({exc})", file=file) from None
    i = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield RawRow(f"row {i}", i, row, row)
            i += 1


def _dataset_rows(path: Path, file: str) -> Iterator[RawRow]:
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError("a folder must be a `datasets` folder written by save_to_disk (or give a .jsonl, .json "
                        "or .parquet file)", file=file) from None
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            splits = list(dataset)
            raise DataError(f"this DatasetDict has splits {splits} and no 'train' split; pass one split's folder, "
                            f"e.g. {Path(file) / splits[0]}", file=file)
        dataset = dataset["train"]
    for i, row in enumerate(dataset):
        yield RawRow(f"row {i}", i, row, row)


def read_rows(path: str | Path) -> Iterator[RawRow]:
    """The rows of a local file or datasets folder, each with its location; unreadable rows come
    with their error set, so the caller decides whether to stop or skip."""
    file, path = str(path), Path(path).expanduser()
    if not path.exists():
        hint = ""
        if not str(file).startswith((".", "/", "~")) and str(file).count("/") == 1:
            hint = (" (alignlab reads local files only; to use a Hub dataset, save it where there is internet "
                    "with `datasets.load_dataset(...).save_to_disk(DIR)` and pass DIR)")
        raise FileNotFoundError(f"data file not found: {file}{hint}")
    if path.is_dir():
        return _dataset_rows(path, file)
    kind = FILE_KINDS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"unknown file type '{path.suffix}'; use .jsonl, .json, .parquet or a saved datasets folder",
                        file=file)
    if kind == "jsonl":
        return _jsonl_rows(_binary_lines(path))
    return _json_rows(path, file) if kind == "json" else _parquet_rows(path, file)


def _binary_lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from f


# --- loading -----------------------------------------------------------------------------------


def _rename(data: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    if not columns:
        return data
    out = {k: v for k, v in data.items() if k not in columns.values()}
    out.update({field: data[column] for field, column in columns.items() if column in data})
    return out


def _meta(row: Row, file: str, raw: RawRow) -> dict[str, Any]:
    meta = {(f"row_{k}" if k in PROVENANCE else k): v for k, v in row.meta().items()}
    meta.update(file=file, line=raw.number, location=raw.location)
    return meta


def _check_options(format: str, columns: dict | None, pairing: str | None) -> dict[str, str]:
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; known: auto, {', '.join(FORMATS)}")
    columns = dict(columns or {})
    unknown = [k for k in columns if k not in KNOWN_FIELDS]
    if unknown:
        raise ValueError(f"columns: unknown alignlab field(s) {unknown}; map these: {', '.join(KNOWN_FIELDS)}")
    bad = [k for k, v in columns.items() if not isinstance(v, str)]
    if bad:
        raise ValueError(f"columns: the column name for {bad[0]!r} must be a string, got {columns[bad[0]]!r}")
    if pairing is not None and pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    return columns


def _undetected(data: dict[str, Any], file: str, location: str | None) -> DataError:
    known = "; ".join(f"{f.name}: {f.fields}" for f in FORMATS.values())
    return DataError(f"cannot tell the data format from the keys {sorted(data)}. Known formats: {known}. "
                     "Rename your columns with columns={alignlab_field: your_column}, or force format=...",
                     file=file, location=location)


def count_pair_issues(records: list, report: DataReport) -> None:
    """Count (and keep) pairs whose two responses are identical, and repeated pairs."""
    seen = set()
    for record in records:
        if not isinstance(record, PairwiseRecord):
            continue
        if record.chosen == record.rejected:
            report.add(SAME_PAIR, example=record_where(record))
        key = (json.dumps(record.prompt, sort_keys=True), record.chosen, record.rejected)
        if key in seen:
            report.add(DUPLICATE_PAIR, example=record_where(record))
        seen.add(key)


def load_records(
    path: str | Path,
    *,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    skip_invalid: bool = False,
    rejects_path: str | None = None,
    pairing: str | None = "best_vs_worst",
    seed: int = 0,
    to_pairs: bool = True,
) -> LoadResult:
    """Read `path` into records. `columns` maps alignlab field -> your column name. With
    `to_pairs` and a `pairing` rule, ratings and rankings come back as PairwiseRecords."""
    columns = _check_options(format, columns, pairing)
    file, fmt = str(path), None if format == "auto" else format
    report, records, keys_seen = DataReport(), [], set()
    rows = read_rows(path)
    with _rejects_file(rejects_path if skip_invalid else None) as rejects:
        for raw in rows:
            report.add("rows read")
            try:
                if raw.error is not None:
                    raise raw.error
                data = _rename(raw.data, columns)
                if fmt is None:
                    fmt = detect_format(data)
                    if fmt is None:
                        keys_seen.update(data)
                        if not skip_invalid:
                            raise _undetected(data, file, raw.location)
                        raise RowError(None, "unknown format", str(_undetected(data, file, None)))
                row = Row(data, columns)
                record = FORMATS[fmt].parse(row)
                record.meta = _meta(row, file, raw)
                records.append(record)
            except RowError as exc:
                field = columns.get(exc.field, exc.field) if exc.field else None
                error = DataError(exc.detail, file=file, location=raw.location, field=field)
                if not skip_invalid:
                    raise error from None
                report.add(f"skipped invalid: {exc.reason}", example=str(error))
                if rejects is not None:
                    rejects.write(_reject_line(raw.raw, str(error)))
    if fmt is None and keys_seen:
        raise _undetected(dict.fromkeys(keys_seen), file, None)
    if not report["rows read"]:
        raise DataError("the data is empty: no rows to read (blank lines are not rows)", file=file)
    report.add(f"valid rows ({fmt or 'unknown'})", len(records))
    if to_pairs and pairing is not None:
        records = ratings_to_pairs(records, pairing, seed, report)
    count_pair_issues(records, report)
    return LoadResult(records=records, report=report, format=fmt or "unknown")


@contextlib.contextmanager
def _rejects_file(path: str | None):
    if path is None:
        yield None
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yield f


def _reject_line(raw: Any, error: str) -> str:
    row = dict(raw) if isinstance(raw, dict) else {"_raw": raw}
    row["_error"] = error
    return json.dumps(row, ensure_ascii=False, default=str) + "\n"
