"""The one entry point from a data file to validated SFT conversations.

read (readers) -> detect (formats) -> convert (formats) -> validate (validate). Bad records are
either skipped and kept as `Reject`s (so they can be counted, reported and written to
rejects.jsonl: nothing is dropped silently) or, with on_error="fail", stop the load with a
`DataError` that names the file, line, record and field. A file that is the wrong kind of data
altogether (preference pairs, raw text) fails once, up front, instead of rejecting every record.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple, ParamSpec

from lmtune.data.formats import (
    FIELDS,
    FORMATS,
    SFT_FORMATS,
    detect_format,
    to_conversation,
    wrong_task_message,
)
from lmtune.data.readers import RawRecord, iter_raw_records
from lmtune.data.records import Conversation, LoadResult, Message, Reject
from lmtune.data.validate import RecordError, validate_conversation
from lmtune.errors import DataError

P = ParamSpec("P")
ON_ERROR = ("skip", "fail")
DETECT_SAMPLE = 20  # readable records a format (or the text field) is detected on
KEEP_REJECTS = 20  # rejects a streamed read holds for its messages and reports; the rest are counted
# What `roles:` may map: our roles plus ShareGPT's function_call turn (an assistant tool call).
SHAREGPT_ROLE_KEYS = ("user", "assistant", "system", "tool", "function_call")


class Opened(NamedTuple):
    """A data file opened by its task's reader: the format, and each record (or the Reject saying why
    it is none) as it is read, so the whole-file loaders and the streaming store share every step."""

    path: str
    format: str
    items: Iterator[Any]


def whole_file(open_file: Callable[P, Opened]) -> Callable[P, LoadResult]:
    """The whole-file loader of a task (lmtune.data.sources' contract, returning a LoadResult of
    records and rejects) from its opener, which takes the same parameters."""

    @functools.wraps(open_file)
    def load(*args: P.args, **kwargs: P.kwargs) -> LoadResult:
        opened = open_file(*args, **kwargs)
        result = LoadResult(path=opened.path, format=opened.format)
        for item in opened.items:
            (result.rejects if isinstance(item, Reject) else result.records).append(item)
        result.total = len(result.records) + len(result.rejects)
        return result

    load.__name__ = load.__qualname__ = open_file.__name__.replace("open_", "load_", 1)
    load.__doc__ = f"Every record and reject of `{open_file.__name__}`, read whole into a LoadResult."
    return load


def open_conversations(
    path: str | Path,
    *,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    on_error: str = "skip",
    system: str | None = None,
    limit: int | None = None,
    roles: dict[str, str] | None = None,
    text_split: str = "document",  # noqa: ARG001 - the shared loader contract (lmtune.data.sources)
    open_end: bool = False,
) -> Opened:
    """Open `path` as canonical conversations; `limit` caps the records read from the file.

    `roles` maps ShareGPT roles to the speaker names a file uses ({user: human, ...}).
    `open_end` also accepts records that end with a user turn (evaluation prompts without an answer).
    The format is detected on the first readable records; only those are held, so the SFT store
    (lmtune.datastore.stream) streams a file through in flat memory.
    """
    file = str(path)
    _check_options(format, on_error, limit)
    samples, raws = read_head(path, limit, detect=format == "auto")
    fmt = detect_format(samples, file=file, columns=columns) if format == "auto" else format
    if fmt not in SFT_FORMATS:  # preference / text: not SFT data
        message, hint = wrong_task_message(fmt)
        raise DataError(message, file=file, hint=hint)
    check_columns(fmt, columns, file=file)
    _check_roles(fmt, roles, file=file)

    def convert(data: Any) -> Conversation:
        return _convert(data, fmt, columns, system, roles, open_end)

    return Opened(file, fmt, convert_raws(raws, convert, file=file, on_error=on_error))


# every conversation and reject of open_conversations, in a LoadResult (task: sft's loader)
load_conversations = whole_file(open_conversations)


def split_head(
    raws: Iterator[RawRecord], readable: int = DETECT_SAMPLE
) -> tuple[list[RawRecord], Iterator[RawRecord]]:
    """(head, every record): the records up to the `readable`-th parsed one, for detection, and an
    iterator over the whole file again, head first, so a file is read once and only its head is
    held (each head record is let go as the iterator hands it over)."""
    head: list[RawRecord] = []
    parsed = 0
    for raw in raws:
        head.append(raw)
        parsed += raw.data is not None
        if parsed >= readable:
            break

    def again() -> Iterator[RawRecord]:
        while head:
            yield head.pop(0)
        yield from raws

    return head, again()


def read_head(
    path: str | Path, limit: int | None, *, detect: bool
) -> tuple[list[dict[str, Any]], Iterator[RawRecord]]:
    """(samples, every record): the first readable records, which a format is detected on, and the
    whole file again (`limit` records at most). An empty file is a DataError; so is, when the format
    is to be `detect`ed, a file of which no record can be read."""
    file = str(path)
    head, raws = split_head(islice(iter_raw_records(path), limit))
    if not head:
        raise DataError("the file holds no records.", file=file, hint="check that it is the file you meant.")
    samples = [r.data for r in head if r.data is not None]
    if detect and not samples:  # the head is then the whole file
        _raise_nothing_valid(file, [r.error for r in head], len(head))
    return samples, raws


def convert_raws(
    raws: Iterable[RawRecord], convert: Callable[[Any], Any], *, file: str, on_error: str
) -> Iterator[Any]:
    """Each raw record converted, or the Reject saying why not, in file order: the one loop every
    task's reader shares, whole-file or streaming.

    `convert(data)` returns a record (which gets its `source`, "file.jsonl#12") or raises
    RecordError, which becomes a Reject with the file, record, line and raw data, or, with
    on_error="fail", a DataError naming all of them. Unreadable records (raw.error) are rejects too.
    When no record at all is usable, a DataError names the commonest reasons and the first reject;
    only KEEP_REJECTS rejects are held for it, so a streamed file stays flat in memory.
    """
    name = Path(file).name
    first: list[Reject] = []
    counts: dict[str, int] = {}
    read = usable = 0
    for raw in raws:
        read += 1
        reject = raw.error
        if raw.data is not None:
            try:
                record = convert(raw.data)
            except RecordError as e:
                reject = Reject(file, raw.index, raw.line, e.field, e.reason, str(e), raw.data)
            else:
                record.source = f"{name}#{raw.index}"
                usable += 1
                yield record
                continue
        assert reject is not None  # a reader sets `error` on every record it could not parse
        if on_error == "fail":
            raise _reject_error(reject)
        counts[reject.reason] = counts.get(reject.reason, 0) + 1
        if len(first) < KEEP_REJECTS:
            first.append(reject)
        yield reject
    if read and not usable:
        _raise_nothing_valid(file, first, read, counts)


def _convert(
    data: dict[str, Any],
    fmt: str,
    columns: dict[str, str] | None,
    system: str | None,
    roles: dict[str, str] | None = None,
    open_end: bool = False,
) -> Conversation:
    """Convert and validate before adding the default system prompt, so field indexes match the file."""
    conv = to_conversation(data, fmt, columns=columns, roles=roles)
    validate_conversation(conv, open_end=open_end)
    if system is not None and conv.messages[0].role != "system":
        conv.messages.insert(0, Message("system", system))
    return conv


def _check_options(format: str, on_error: str, limit: int | None) -> None:
    if format != "auto" and format not in FORMATS:
        close = difflib.get_close_matches(format, FORMATS, n=1)
        did = f" Did you mean '{close[0]}'?" if close else ""
        raise DataError(f"unknown format '{format}'.{did}", hint=f"use auto or one of {', '.join(FORMATS)}.")
    if on_error not in ON_ERROR:
        raise DataError(
            f"unknown on_error '{on_error}'.", hint="use skip (keep going, write rejects) or fail."
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(
            f"limit must be a whole number >= 1, got {limit!r}.", hint="leave it out to read every record."
        )


def check_columns(
    fmt: str,
    columns: dict[str, str] | None,
    *,
    file: str | None = None,
    fields: dict[str, tuple[str, ...]] = FIELDS,
) -> None:
    """Reject `columns` keys the format does not know (a typo would otherwise be ignored).

    `fields` maps each format to its field names (the SFT formats' by default; preference has its own)."""
    for key, value in (columns or {}).items():
        if key not in fields[fmt]:
            close = difflib.get_close_matches(key, fields[fmt], n=1)
            did = f" Did you mean '{close[0]}'?" if close else ""
            raise DataError(
                f"`columns:` maps '{key}', which is not a field of the {fmt} format.{did}",
                file=file,
                hint=f"the keys of `columns:` are {fmt} field names ({', '.join(fields[fmt])}); "
                "the values are the names in your file.",
            )
        if not isinstance(value, str) or not value:
            raise DataError(f"`columns:` value for '{key}' must be a field name, got {value!r}.", file=file)


def _check_roles(fmt: str, roles: dict[str, str] | None, *, file: str | None = None) -> None:
    """`roles` renames ShareGPT speakers; a typo in a role, or roles on another format, is an error."""
    if not roles:
        return
    if fmt != "sharegpt":
        raise DataError(
            f"`roles:` names ShareGPT speakers, but this file is read as {fmt}.",
            file=file,
            hint="set `format: sharegpt` if the file holds {from, value} turns, or remove `roles:`.",
        )
    for role, speaker in roles.items():
        if role not in SHAREGPT_ROLE_KEYS:
            close = difflib.get_close_matches(role, SHAREGPT_ROLE_KEYS, n=1)
            did = f" Did you mean '{close[0]}'?" if close else ""
            raise DataError(
                f"`roles:` maps '{role}', which is not a role.{did}",
                file=file,
                hint=f"the keys of `roles:` are {', '.join(SHAREGPT_ROLE_KEYS)}; the values are the "
                "speaker names in your file, e.g. roles: {user: human, assistant: gpt}.",
            )
        if not isinstance(speaker, str) or not speaker:
            raise DataError(
                f"`roles:` value for '{role}' must be a speaker name, got {speaker!r}.", file=file
            )


def _reject_error(r: Reject) -> DataError:
    message, _, hint = r.message.partition(" Fix: ")
    return DataError(message, file=r.file, record=r.record, line=r.line, field=r.field, hint=hint or None)


def _raise_nothing_valid(
    file: str, rejects: list[Reject | None], total: int, counts: dict[str, int] | None = None
) -> None:
    """`counts` (reason -> rejects) where `rejects` holds only the first ones (a streamed file)."""
    rejects_ = [r for r in rejects if r is not None]
    if counts is None:
        counts = {}
        for r in rejects_:
            counts[r.reason] = counts.get(r.reason, 0) + 1
    top = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1])[:3])
    detail = ""
    if rejects_:
        first = rejects_[0]
        line = f" (line {first.line})" if first.line else ""
        detail = f" First: record {first.record}{line}: {first.message}"
    # the first reject's message carries its own fix; a second, generic one only where it has none
    has_fix = " Fix: " in detail
    raise DataError(
        f"no usable records: all {total} were rejected ({top}).{detail}",
        file=file,
        hint=None
        if has_fix
        else "fix the problem above, which every record shares, or check `format:` / `columns:`.",
    )


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> None:
    """One JSON object per line, UTF-8 kept readable (no \\u escapes); parents are created."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def write_rejects(rejects: Iterable[Reject], path: str | Path) -> None:
    """rejects.jsonl: every skipped record with where it was, why, and its raw data (NaN and
    infinities, which the reader accepts but JSON has no words for, written as strings)."""
    write_jsonl(({**r.to_dict(), "raw": _finite(r.raw)} for r in rejects), path)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def summarize_rejects(result: LoadResult, rejects_file: str = "rejects.jsonl") -> str:
    """One line for the console, e.g. '12 of 500 records skipped: 7 empty_answer, 5 invalid_json (see ...)'."""
    if not result.rejects:
        return f"all {result.total} records loaded"
    counts = ", ".join(f"{n} {reason}" for reason, n in result.reject_counts().items())
    return f"{len(result.rejects)} of {result.total} records skipped: {counts} (see {rejects_file})"
