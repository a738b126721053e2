"""Read SFT records in one streaming pass: conversations out one at a time, rejects counted and
written to a file as they come, so memory stays flat however many records a file holds.

The same steps as `lmtune.data.load.load_conversations` (read -> detect -> convert -> validate, the
same reject reasons and messages), only never as a whole-file list: the format is detected on the
first 20 readable records (buffered), then every record flows through.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Any

from lmtune.data.formats import SFT_FORMATS, detect_format, wrong_task_message
from lmtune.data.load import (
    _check_options,
    _check_roles,
    _convert,
    _raise_nothing_valid,
    _reject_error,
    check_columns,
)
from lmtune.data.readers import RawRecord, iter_raw_records
from lmtune.data.records import Conversation, Reject
from lmtune.data.sources import SourceSpec
from lmtune.data.validate import RecordError
from lmtune.errors import DataError

DETECT_SAMPLE = 20  # records the format is detected on, as load_conversations does
KEEP_REJECTS = 20  # rejects kept in memory for a report; all of them go to the file


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
    file = spec.path
    _check_options(spec.format, on_error, spec.limit)
    stats = stats if stats is not None else StreamStats(file)
    raws = islice(iter_raw_records(file), spec.limit)
    head: list[RawRecord] = []
    for raw in raws:
        head.append(raw)
        if sum(r.data is not None for r in head) >= DETECT_SAMPLE:
            break
    if not head:
        raise DataError("the file holds no records.", file=file, hint="check that it is the file you meant.")
    fmt = spec.format
    if fmt == "auto":
        samples = [r.data for r in head if r.data is not None]
        if not samples:
            rest = [r.error for r in raws]
            _raise_nothing_valid(file, [r.error for r in head] + rest, len(head) + len(rest))
        fmt = detect_format(samples, file=file, columns=spec.columns or None)
    if fmt not in SFT_FORMATS:
        message, hint = wrong_task_message(fmt)
        raise DataError(message, file=file, hint=hint)
    check_columns(fmt, spec.columns or None, file=file)
    _check_roles(fmt, spec.roles or None, file=file)
    stats.format = fmt
    name = Path(file).name
    first_rejects: list[Reject] = []
    for raw in _chain(head, raws):
        stats.read += 1
        reject = raw.error
        if raw.data is not None:
            try:
                conv = _convert(raw.data, fmt, spec.columns or None, spec.system, spec.roles or None)
            except RecordError as e:
                reject = Reject(file, raw.index, raw.line, e.field, e.reason, str(e), raw.data)
            else:
                conv.source = f"{name}#{raw.index}"
                stats.usable += 1
                yield conv
                continue
        if on_error == "fail":
            raise _reject_error(reject)
        if len(first_rejects) < KEEP_REJECTS:
            first_rejects.append(reject)
        sink.add(reject)
    if not stats.usable:
        _raise_nothing_valid(file, first_rejects, stats.read)


def _chain(head: list[RawRecord], rest: Iterator[RawRecord]) -> Iterator[RawRecord]:
    while head:  # hand the buffered records over one by one, so none is held after it is used
        yield head.pop(0)
    yield from rest
