"""Read SFT records in one streaming pass: conversations out one at a time, rejects counted and
written to a file as they come, so memory stays flat however many records a file holds.

The same steps as `lmtune.data.load.load_conversations` (read -> detect -> convert -> validate, the
same reject reasons and messages: `open_conversations` serves both), only never as a whole-file
list: the format is detected on the first 20 readable records (buffered), then every record flows
through.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lmtune.data.load import KEEP_REJECTS
from lmtune.data.records import Conversation, Reject
from lmtune.data.sources import SourceSpec, open_file


@dataclass
class RejectSink:
    """Counts rejects by reason and appends each to a rejects.jsonl (when a path is given)."""

    path: Path | None = None
    counts: dict[str, int] = field(default_factory=dict)
    first: list[Reject] = field(default_factory=list)
    total: int = 0
    _fh: IO[str] | None = None

    def add(self, reject: Reject) -> None:
        self.total += 1
        self.counts[reject.reason] = self.counts.get(reject.reason, 0) + 1
        if len(self.first) < KEEP_REJECTS:
            self.first.append(reject)
        if self.path is not None:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = self.path.open("a", encoding="utf-8", newline="\n")
            self._fh.write(json.dumps(reject.to_dict(), ensure_ascii=False, default=str) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def by_reason(self) -> dict[str, int]:
        return dict(sorted(self.counts.items(), key=lambda kv: -kv[1]))


@dataclass
class StreamStats:
    """What one file contributed: records read, usable, the detected format."""

    path: str
    format: str = ""
    read: int = 0
    usable: int = 0


def per_dataset_rows(specs: list[Any], per: list[StreamStats], used: list[int]) -> list[dict[str, Any]]:
    """What a store says of each input file: read, usable, rejected, its weight and records used."""
    return [
        {"name": spec.label, "path": s.path, "format": s.format, "read": s.read, "usable": s.usable,
         "rejected": s.read - s.usable, "weight": spec.weight, "used": n}
        for spec, s, n in zip(specs, per, used)
    ]  # fmt: skip


def stream_conversations(
    spec: SourceSpec, *, on_error: str, sink: RejectSink, stats: StreamStats | None = None
) -> Iterator[Conversation]:
    """The usable conversations of one file, in file order, each with its `source` ("file#12").

    Rejects go to `sink` (or, with on_error="fail", raise a DataError naming file, line and field);
    a file with no usable record at all is a DataError, as in load_conversations.
    """
    stats = stats if stats is not None else StreamStats(spec.path)
    opened = open_file(spec, "sft", on_error=on_error)
    stats.format = opened.format
    yield from tally(opened.items, sink, stats)


def tally(items: Iterable[Any], sink: RejectSink, stats: StreamStats) -> Iterator[Any]:
    """The records of a reader's stream (lmtune.data.load.convert_raws), its rejects sent to `sink`
    and both counted in `stats`."""
    for item in items:
        stats.read += 1
        if isinstance(item, Reject):
            sink.add(item)
            continue
        stats.usable += 1
        yield item
