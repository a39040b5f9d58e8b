"""What happened to the data: every row read, converted, skipped, truncated or dropped is counted
under a plain-English reason, so a run's `data_report.json` accounts for each example."""

from __future__ import annotations

MAX_EXAMPLES = 3


class DataReport:
    """Counts by reason, in the order reasons first occurred, with up to three examples each
    (e.g. the error message of the first skipped rows)."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, n: int = 1, example: str | None = None) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n
        if example is not None:
            kept = self.examples.setdefault(reason, [])
            if len(kept) < MAX_EXAMPLES:
                kept.append(example)

    def merge(self, other: "DataReport") -> "DataReport":
        for reason, n in other.counts.items():
            self.add(reason, n)
        for reason, examples in other.examples.items():
            kept = self.examples.setdefault(reason, [])
            kept.extend(examples[: MAX_EXAMPLES - len(kept)])
        return self

    def __getitem__(self, reason: str) -> int:
        return self.counts.get(reason, 0)

    def __contains__(self, reason: str) -> bool:
        return reason in self.counts

    def to_dict(self, *, with_examples: bool = False) -> dict:
        """{reason: count}; with `with_examples`, also "examples": {reason: [text, ...]}."""
        out: dict = dict(self.counts)
        if with_examples and self.examples:
            out["examples"] = {k: list(v) for k, v in self.examples.items()}
        return out

    def lines(self, *, with_examples: bool = False) -> list[str]:
        """One 'reason: count' line per reason (plus indented examples when asked)."""
        out = []
        for reason, n in self.counts.items():
            out.append(f"{reason}: {n}")
            if with_examples:
                out.extend(f"    e.g. {e}" for e in self.examples.get(reason, []))
        return out

    def __repr__(self) -> str:
        return f"DataReport({self.counts!r})"
