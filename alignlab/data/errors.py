"""The data layer's one error type: it says where (file, line or row) and which field."""

from __future__ import annotations


class DataError(Exception):
    """A problem with the data itself, e.g.
    `data.jsonl, line 7, field 'chosen': expected a string or a message list, got int`.

    `file` is the path as the user gave it; `location` is "line 7" (JSON Lines, 1-based),
    "item 3" (a JSON list, 0-based) or "row 5" (parquet and datasets folders, 0-based);
    `field` is the user's column name. Any of them may be None for whole-file problems."""

    def __init__(self, message: str, *, file: str | None = None, location: str | None = None,
                 field: str | None = None):
        self.file, self.location, self.field, self.detail = file, location, field, message
        super().__init__(format_where(file, location, field) + message)


def format_where(file: str | None, location: str | None = None, field: str | None = None) -> str:
    """'data.jsonl, line 7, field 'chosen': ' (the parts that are known), or ''."""
    parts = [p for p in (file, location, f"field '{field}'" if field else None) if p]
    return ", ".join(parts) + ": " if parts else ""


def record_where(record) -> str | None:
    """'data.jsonl, line 7' for a record that a loader read (from its meta), else None."""
    meta = getattr(record, "meta", None) or {}
    if "file" in meta and "location" in meta:
        return f"{meta['file']}, {meta['location']}"
    return None
