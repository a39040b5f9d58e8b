"""Votes out as training records: one JSON Lines file in the format alignlab loads for the
project's task (pairwise, ranking, ultrafeedback-style ratings, binary), which `load_records`
reads back unchanged. Every row carries the annotator and a `feedback` object: project, item and
vote ids, the time of the vote, the presentation order, and critique, attribute scores and
highlighted spans where given; a pair's strength becomes its `margin`.

A tie or a "both bad" answer names no chosen response, so it is not a pair: such votes are counted
in the summary (and stay in the database), never written as pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignlab.data.records import BinaryRecord, PairwiseRecord, RankingRecord, RatingRecord
from alignlab.feedback import store
from alignlab.feedback.tasks import TASKS


def record_row(record) -> dict:
    """The JSON row of a record, in the loader's format for its type (meta keys at the top level)."""
    head: dict = {"prompt": record.prompt}
    if isinstance(record, PairwiseRecord):
        head.update(chosen=record.chosen, rejected=record.rejected)
        if record.margin is not None:
            head["margin"] = record.margin
    elif isinstance(record, RankingRecord):
        head["responses"] = record.responses
    elif isinstance(record, RatingRecord):
        head.update(responses=record.responses, scores=record.ratings)
    elif isinstance(record, BinaryRecord):
        head.update(completion=record.response, label=record.desirable)
    else:
        raise TypeError(f"cannot export {type(record).__name__}")
    if record.annotator is not None:
        head["annotator"] = record.annotator
    return {**head, **record.meta}


def project_records(sessions, project_slug: str) -> tuple[list, dict]:
    """(records, counts) for every vote of the project, oldest first."""
    with sessions() as db:
        project = store.get_project(db, project_slug)
        make = TASKS[project.task].record
        records, counts = [], {"votes": 0, "ties": 0, "both_bad": 0}
        for vote, item, name in store.vote_rows(db, project):
            counts["votes"] += 1
            record = make(item, vote, project, name)
            if record is None:
                counts["ties" if vote.payload["choice"] == "tie" else "both_bad"] += 1
            else:
                records.append(record)
        return records, {"task": project.task, **counts}


def export(sessions, project_slug: str, output, *, overwrite: bool = False) -> dict:
    out = Path(output)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    records, counts = project_records(sessions, project_slug)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record_row(record), ensure_ascii=False) + "\n")
    tmp.replace(out)
    summary = {"project": project_slug, **counts, "records": len(records), "output": str(out)}
    if counts["ties"] or counts["both_bad"]:
        summary["not_written"] = (f"{counts['ties']} tie(s) and {counts['both_bad']} 'both bad' vote(s): they name "
                                  "no chosen response (kept in the database)")
    return summary
