"""People as a preference source: `prefer(prompts, a, b) -> P(a > b)` answered by the app.

The protocol of alignlab's preference sources (docs/architecture.md): given N comparisons,
return (N,) probabilities that response a is preferred to b. `AppPreferenceSource` queues the
comparisons as items of a pairwise project, waits until each has its votes (the project's
overlap), and answers with the share of votes for a; a tie or "both bad" counts one half. An
online trainer can take its labels from it as from a simulated annotator, with people (or the
lab's simulated annotators answering through the HTTP API) in the loop.
"""

from __future__ import annotations

import time
import uuid
from typing import Sequence

import torch
from sqlalchemy import select

from alignlab.feedback import store
from alignlab.feedback.db import Vote, open_database

VALUE = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}


class AppPreferenceSource:
    """Args:
        database_url: the app's database (the same machine as `alignlab feedback serve`).
        project: a pairwise project; its `overlap` is the number of votes waited for per comparison.
        poll_seconds: how often the database is checked for new votes.
        timeout: seconds to wait for all votes of one call (None: no limit); then TimeoutError.
    """

    def __init__(self, database_url: str, project: str, *, poll_seconds: float = 5.0, timeout: float | None = None):
        self.sessions, self.project, self.poll_seconds, self.timeout = open_database(database_url), project, \
            poll_seconds, timeout
        with self.sessions() as db:
            found = store.get_project(db, project)
            if found.task != "pairwise":
                raise ValueError(f"project {project!r} is a {found.task} project; preferences need a pairwise one")
            self.votes_needed = found.overlap
        self.last_votes: list[list[dict]] = []  # per comparison: {annotator, choice, strength, critique}

    def prefer(self, prompts: Sequence, a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        if not len(prompts) == len(a) == len(b):
            raise ValueError(f"prompts, a and b must have the same length, got {len(prompts)}, {len(a)}, {len(b)}")
        batch = uuid.uuid4().hex
        with self.sessions() as db:
            items = store.add_items(db, store.get_project(db, self.project), [
                {"prompt": p, "responses": [x, y], "meta": {"batch": batch, "index": i}}
                for i, (p, x, y) in enumerate(zip(prompts, a, b))])
        ids = [item.id for item in items]
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            votes = self._votes(ids)
            missing = sum(max(0, self.votes_needed - len(votes[i])) for i in ids)
            if missing == 0:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"project {self.project!r}: {missing} vote(s) still missing on items {ids[0]}-"
                                   f"{ids[-1]} after {self.timeout} s (they stay queued)")
            time.sleep(self.poll_seconds)
        self.last_votes = [votes[i][: self.votes_needed] for i in ids]
        return torch.tensor([sum(VALUE[v["choice"]] for v in vs) / len(vs) for vs in self.last_votes])

    def _votes(self, ids: list[int]) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {i: [] for i in ids}
        with self.sessions() as db:
            for vote, name in db.execute(select(Vote, store.User.name).join(store.User, store.User.id == Vote.user_id)
                                         .where(Vote.item_id.in_(ids)).order_by(Vote.id)):
                out[vote.item_id].append({"annotator": name, **vote.payload})
        return out
