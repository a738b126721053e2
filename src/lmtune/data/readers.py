"""Read data files into raw records, one format-agnostic dict per record.

Readers only parse; they never guess what the fields mean (that is `formats.py`). A record that
cannot be parsed (a bad JSON line, a CSV row with the wrong number of cells) comes back as a
`RawRecord` with `error` set, so the loader can skip it, count it and write it to the rejects file
instead of dropping it silently or aborting a 100k-line file over one line. A problem with the
whole file (missing, not UTF-8, not JSON at all) is a `DataError` naming the file.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from lmtune.data.records import Reject
from lmtune.errors import DataError

SUPPORTED = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".txt")
TEXT_SPLITS = ("file", "line", "paragraph")
# A JSON object with one of these keys is one record, not a wrapper around a list of records.
_RECORD_KEYS = frozenset(
    {"messages", "conversations", "chosen", "rejected", "preferred_output", "non_preferred_output",
     "instruction", "output", "response", "prompt", "completion", "text"}
)  # fmt: skip
_WS = re.compile(r"[ \t\n\r]*")


@dataclass
class RawRecord:
    """One record as read from the file, before any format is applied."""

    index: int  # 1-based record number in the file
    line: int | None  # 1-based line where the record starts, where the format has lines
    data: dict[str, Any] | None  # parsed record; None when it could not be parsed
    error: Reject | None = None  # why it could not be parsed


def iter_raw_records(
    path: str | Path, *, text_split: str = "file", header: bool = True
) -> Iterator[RawRecord]:
    """Yield the records of `path`, choosing the reader from the file extension.

    `header=False` reads a CSV/TSV file whose first row is already data; its cells are then
    named by position ("0", "1", ...).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED:
        raise DataError(
            f"unsupported file type '{p.suffix or '(none)'}'.",
            file=str(path),
            hint=f"use one of {', '.join(SUPPORTED)} (a .json file may hold a JSON array or JSON lines).",
        )
    if not p.exists():
        raise DataError(
            "file not found.",
            file=str(path),
            hint="check the path (relative paths start from the current folder).",
        )
    if p.is_dir():
        raise DataError("is a folder, not a data file.", file=str(path), hint="name one file inside it.")
    if text_split not in TEXT_SPLITS:
        raise DataError(f"unknown text_split '{text_split}'.", hint=f"use one of {', '.join(TEXT_SPLITS)}.")
    if suffix == ".parquet":
        return _read_parquet(p, str(path))
    # JSON lines, CSV/TSV and line/paragraph text are read as a stream (one line at a time), so a
    # file of millions of records never sits in memory as a whole; a JSON array has to be parsed whole.
    if suffix in (".jsonl", ".ndjson") and _first_char(p, str(path)) != "[" and not _pretty_start(p):
        return _read_jsonl(_stream_lines(p, str(path)), str(path))
    if suffix in (".csv", ".tsv"):
        return _read_delimited_stream(p, str(path), tsv=suffix == ".tsv", header=header)
    if suffix == ".txt" and text_split != "file":
        return _read_txt_lines(_stream_lines(p, str(path)), str(path), text_split)
    text = _read_text(p, str(path))
    if suffix == ".json":
        return _read_json(text, str(path))
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl_or_array(text, str(path))
    return _read_txt(text, str(path), text_split)


def _first_char(p: Path, file: str) -> str:
    """The first non-blank character of the file (after a UTF-8 BOM), '' for a blank file."""
    with p.open("rb") as fh:
        head = fh.read(4096)
        _check_not_utf16(head, file)
        head = head.removeprefix(b"\xef\xbb\xbf")
        while head and not head.strip():
            head = fh.read(4096)
        stripped = head.lstrip()
        return chr(stripped[0]) if stripped else ""


def _pretty_start(p: Path) -> bool:
    """Whether the first non-blank line is a lone "{": pretty-printed objects, read whole."""
    with p.open("rb") as fh:
        head = fh.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    return head.split(b"\n", 1)[0].strip() == b"{"


def _check_not_utf16(head: bytes, file: str) -> None:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(
            "the file is UTF-16, not UTF-8.",
            file=file,
            hint="re-save it as UTF-8 (e.g. `iconv -f utf-16 -t utf-8`).",
        )


def _stream_lines(p: Path, file: str, *, keep_ends: bool = False) -> Iterator[str]:
    """The file's lines decoded as UTF-8, one at a time, split on "\\n" only (like
    `text.split("\\n")`; a trailing "\\r" stays). A bad byte stops with the same DataError
    `_read_text` gives, pointing at its line."""
    offset = 0
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1:
                _check_not_utf16(raw, file)
                if raw.startswith(b"\xef\xbb\xbf"):
                    raw, offset = raw[3:], 3
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"the file is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {offset + e.start}).",
                    file=file,
                    line=lineno,
                    hint="re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`).",
                ) from None
            offset += len(raw)
            yield line if keep_ends else line.removesuffix("\n")


def _read_text(p: Path, file: str) -> str:
    """Decode as UTF-8 (a leading BOM is dropped); other encodings get a pointed fix."""
    data = p.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(
            "the file is UTF-16, not UTF-8.",
            file=file,
            hint="re-save it as UTF-8 (e.g. `iconv -f utf-16 -t utf-8`).",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"the file is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}).",
            file=file,
            line=line,
            hint="re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`).",
        ) from None


# ---------------------------------------------------------------- JSON / JSON lines


def _read_json(text: str, file: str) -> Iterator[RawRecord]:
    """A .json file: an array of objects, an object wrapping one such array, or JSON lines."""
    scanned = _scan_array(text)
    if scanned is not None:
        return _array_records(scanned[0], scanned[1], file)
    stripped = text.lstrip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if stripped.startswith("{") and _first_line_is_object(stripped):
            return _read_jsonl(text, file)  # JSON lines saved with a .json name
        objects = _scan_objects(text)
        if objects is not None:
            return _array_records(objects[0], objects[1], file)  # pretty-printed objects one after another
        python = (
            " It looks like Python syntax (single quotes, True/False/None), not JSON."
            if _is_python(text)
            else ""
        )
        raise DataError(
            f"invalid JSON: {e.msg} (line {e.lineno}, column {e.colno}).{python}",
            file=file,
            line=e.lineno,
            hint=(PYTHON_HINT + " " if python else "")
            + "fix the JSON at that position (a missing comma or quote, or a trailing comma, is typical); "
            "or save one object per line as .jsonl so one bad record does not stop the whole file.",
        ) from None
    except (ValueError, RecursionError) as e:  # a 5000-digit number, nesting deeper than Python's stack
        raise DataError(
            f"the JSON cannot be read: {_value_problem(e)}.",
            file=file,
            hint="write numbers with at most 4300 digits (or as strings) and nest lists/objects less deeply.",
        ) from None
    if isinstance(data, list):
        return _array_records(data, None, file)
    if isinstance(data, dict):
        return _array_records(_unwrap_object(data, file), None, file)
    raise DataError(
        f"the file holds a JSON {_json_type(data)}, not records.",
        file=file,
        hint='store a JSON array of objects, e.g. [{"instruction": ..., "output": ...}], or one object per line.',
    )


def _read_jsonl_or_array(text: str, file: str) -> Iterator[RawRecord]:
    """A .jsonl file; a whole JSON array saved under that name is accepted too."""
    if text.lstrip().startswith("["):
        scanned = _scan_array(text)
        if scanned is not None:
            return _array_records(scanned[0], scanned[1], file)
    first = next((line.strip() for line in text.split("\n") if line.strip()), "")
    if first == "{":  # pretty-printed objects one after another: a line of "{" is never a whole record
        objects = _scan_objects(text)
        if objects is not None:
            return _array_records(objects[0], objects[1], file)
    return _read_jsonl(text, file)


def _read_jsonl(text: str | Iterable[str], file: str) -> Iterator[RawRecord]:
    """JSON lines from the whole text or from a stream of lines (`_stream_lines`)."""
    # split on "\n" only: str.splitlines() would also split on U+2028 etc., legal inside JSON strings
    lines = text.split("\n") if isinstance(text, str) else text
    index = 0
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        index += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if _is_python(line):
                problem = f"is a Python dict, not JSON ({e.msg} at column {e.colno}). Fix: {PYTHON_HINT}"
            else:
                problem = (f"is not valid JSON: {e.msg} at column {e.colno}. Fix: repair that line "
                           "(each line must be one complete JSON object) or delete it.")  # fmt: skip
            yield RawRecord(index, lineno, None, _reject(
                file, index, lineno, "invalid_json", line.rstrip("\r"), f"line {lineno} {problem}",
            ))  # fmt: skip
            continue
        except (ValueError, RecursionError) as e:  # a 5000-digit number, nesting deeper than the stack
            yield RawRecord(index, lineno, None, _reject(
                file, index, lineno, "invalid_json", line.rstrip("\r"),
                f"line {lineno} cannot be read: {_value_problem(e)}. Fix: write numbers with at most 4300 "
                "digits (or as strings) and nest lists/objects less deeply.",
            ))  # fmt: skip
            continue
        if not isinstance(obj, dict):
            yield RawRecord(index, lineno, None, _reject(
                file, index, lineno, "not_an_object", obj,
                f"line {lineno} is a JSON {_json_type(obj)}, not an object. Fix: make each line one "
                "JSON object such as {\"messages\": [...]}.",
            ))  # fmt: skip
            continue
        yield RawRecord(index, lineno, obj, None)


def _first_line_is_object(text: str) -> bool:
    first = text.split("\n", 1)[0]
    try:
        return isinstance(json.loads(first), dict)
    except (ValueError, RecursionError):
        return False


PYTHON_HINT = (
    "write the records with json.dumps(record) (double quotes, true/false/null), not str(record) or print()."
)
_PYTHON_WORDS = re.compile(r"(?<![\w\"])(True|False|None)(?![\w\"])")


def _is_python(text: str) -> bool:
    """Whether `text` (invalid JSON) reads as a Python literal: a dict printed with str()/repr()."""
    head = text.lstrip()[:200_000]
    if not head.startswith(("{", "[")) or not ("'" in head or _PYTHON_WORDS.search(head)):
        return False
    import ast

    try:
        return isinstance(ast.literal_eval(head.strip()), (dict, list))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return bool(_PYTHON_WORDS.search(head)) and head.startswith("{'")


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (null, boolean, number, string, array, object)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _value_problem(e: Exception) -> str:
    if isinstance(e, RecursionError):
        return "lists/objects are nested too deeply"
    if "integer string conversion" in str(e):
        return "a number has more than 4300 digits"
    return str(e)


def _scan_objects(text: str) -> tuple[list[Any], list[int]] | None:
    """JSON values written one after another (pretty-printed objects in a .jsonl file) with each
    one's start line, or None when the text is not exactly that."""
    decoder = json.JSONDecoder()
    items: list[Any] = []
    lines: list[int] = []
    line, last = 1, 0
    pos = _WS.match(text, 0).end()
    try:
        while pos < len(text):
            line += text.count("\n", last, pos)
            last = pos
            obj, pos = decoder.raw_decode(text, pos)
            items.append(obj)
            lines.append(line)
            pos = _WS.match(text, pos).end()
    except (ValueError, RecursionError):
        return None
    return (items, lines) if items else None


def _scan_array(text: str) -> tuple[list[Any], list[int]] | None:
    """Parse a top-level JSON array element by element to learn each element's start line.

    Returns None for anything that is not a well-formed array; the caller then re-parses with
    `json.loads` to get the standard error message. Each element is parsed by the C decoder, so
    this costs about the same as `json.loads` itself.
    """
    decoder = json.JSONDecoder()
    pos = _WS.match(text, 0).end()
    if text[pos : pos + 1] != "[":
        return None
    items: list[Any] = []
    lines: list[int] = []
    line, last = 1, 0
    pos = _WS.match(text, pos + 1).end()
    if text[pos : pos + 1] == "]":
        return ([], []) if _WS.match(text, pos + 1).end() == len(text) else None
    try:
        while True:
            line += text.count("\n", last, pos)
            last = pos
            obj, pos = decoder.raw_decode(text, pos)
            items.append(obj)
            lines.append(line)
            pos = _WS.match(text, pos).end()
            sep = text[pos : pos + 1]
            if sep == ",":
                pos = _WS.match(text, pos + 1).end()
            elif sep == "]":
                return (items, lines) if _WS.match(text, pos + 1).end() == len(text) else None
            else:
                return None
    except (ValueError, RecursionError):
        return None


def _unwrap_object(data: dict[str, Any], file: str) -> list[Any]:
    """{"data": [...]} -> the list; a lone record object -> [object]."""
    if _RECORD_KEYS.intersection(data):
        return [data]
    lists = [k for k, v in data.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    if not lists:
        return [data]
    if len(lists) == 1:
        return data[lists[0]]
    raise DataError(
        f"the JSON object holds several lists of records ({', '.join(repr(k) for k in lists)}); "
        "cannot tell which one to read.",
        file=file,
        hint="keep one list (or save it as a JSON array / JSON lines file).",
    )


def _array_records(items: list[Any], lines: list[int] | None, file: str) -> Iterator[RawRecord]:
    for i, obj in enumerate(items, start=1):
        line = lines[i - 1] if lines else None
        if isinstance(obj, dict):
            yield RawRecord(i, line, obj, None)
        else:
            yield RawRecord(i, line, None, _reject(
                file, i, line, "not_an_object", obj,
                f"record {i} is a JSON {_json_type(obj)}, not an object. Fix: make every array "
                "element a JSON object.",
            ))  # fmt: skip


# ---------------------------------------------------------------- CSV / TSV


class _LineTape:
    """The file's lines (ends kept, as csv wants them) as a stream, remembering the lines not yet
    claimed by a record so a bad row can be quoted in the rejects file without keeping the file."""

    def __init__(self, p: Path, file: str):
        self._lines = _stream_lines(p, file, keep_ends=True)
        self.seen: dict[int, str] = {}
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        for line in self._lines:
            self.count += 1
            self.seen[self.count] = line
            yield line

    def raw(self, first: int, last: int) -> str:
        """Lines first..last (1-based, inclusive) as one string without line ends."""
        return "\n".join(self.seen.get(i, "").rstrip("\n") for i in range(first, last + 1)).replace("\r", "")

    def forget(self, upto: int) -> None:
        for i in [i for i in self.seen if i <= upto]:
            del self.seen[i]


def _read_delimited_stream(p: Path, file: str, *, tsv: bool, header: bool = True) -> Iterator[RawRecord]:
    """Header row + rows, values as strings (without a header row, cells are named "0", "1", ...),
    read as a stream.

    TSV is read without quote handling (as GLUE/SST-2 and the IANA TSV definition do): with
    quoting on, one stray `"` at the start of a cell silently swallows every following row.
    """
    kind = "TSV" if tsv else "CSV"
    # strict: an unterminated quote is an error, not a cell that silently swallows the rest of the file
    options: dict[str, Any] = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {"strict": True}
    # the default cell limit (131,072 characters) would reject long documents; no cell exceeds the file
    csv.field_size_limit(max(csv.field_size_limit(), p.stat().st_size + 1))
    tape = _LineTape(p, file)
    reader = csv.reader(tape, **options)
    if not header:
        try:
            first = next((row for row in csv.reader(_LineTape(p, file), **options) if row), None)
        except csv.Error as e:
            raise DataError(f"cannot read the first {kind} row: {e}.", file=file, line=1) from None
        if first is None:
            raise DataError(f"the {kind} file is empty.", file=file, hint="put one row per record.")
        return _delimited_rows(reader, [str(i) for i in range(len(first))], tape, file, kind)
    try:
        names = next(reader, None)
        while names == []:
            names = next(reader, None)
    except csv.Error as e:
        raise DataError(f"cannot read the {kind} header: {e}.", file=file, line=reader.line_num) from None
    if names is None:
        raise DataError(
            f"the {kind} file is empty.", file=file, hint="put a header row first, then one row per record."
        )
    names = [h.strip() for h in names]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes or "" in names:
        problem = f"duplicate column names {dupes}" if dupes else "an empty column name"
        raise DataError(
            f"the {kind} header {names} has {problem}.",
            file=file,
            line=reader.line_num,
            hint="give every column a unique, non-empty name in the first row.",
        )
    return _delimited_rows(reader, names, tape, file, kind)


def _delimited_rows(
    reader: Any, names: list[str], tape: _LineTape, file: str, kind: str
) -> Iterator[RawRecord]:
    index, end = 0, reader.line_num
    tape.forget(end)
    while True:
        start = end + 1
        try:
            row = next(reader, None)
        except csv.Error as e:  # e.g. an unterminated quote, or text after a closing quote
            index += 1
            raw = tape.raw(start, reader.line_num)
            yield RawRecord(index, start, None, _reject(
                file, index, start, "bad_row", raw,
                f"line {start} cannot be parsed as {kind}: {e}. Fix: a cell that contains quotes must be "
                'wrapped in quotes with inner quotes doubled, e.g. "say ""hi""".',
            ))  # fmt: skip
            if reader.line_num < start:
                return
            end = reader.line_num
            tape.forget(end)
            continue
        if row is None:
            return
        end = reader.line_num
        if not row:  # blank line
            tape.forget(end)
            continue
        index += 1
        if len(row) != len(names):
            raw = tape.raw(start, end)
            tape.forget(end)
            yield RawRecord(index, start, None, _reject(
                file, index, start, "bad_row", raw,
                f"line {start} has {len(row)} cells but the header has {len(names)} ({', '.join(names)}). "
                f"Fix: quote cells that contain the delimiter, or add/remove cells on that row.",
            ))  # fmt: skip
            continue
        tape.forget(end)
        yield RawRecord(index, start, dict(zip(names, row, strict=True)), None)


# ---------------------------------------------------------------- Parquet and plain text


def _read_parquet(p: Path, file: str) -> Iterator[RawRecord]:
    """Row groups are read in batches of rows, so a large Parquet file is not held whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def fail(e: Exception) -> DataError:
        return DataError(
            f"cannot read the Parquet file: {e}.", file=file, hint="check it is a valid .parquet file."
        )

    try:
        batches = pq.ParquetFile(p).iter_batches(batch_size=4096)
    except (pa.ArrowException, OSError) as e:
        raise fail(e) from None

    def rows() -> Iterator[RawRecord]:
        index = 0
        try:
            for batch in batches:
                for row in batch.to_pylist():
                    index += 1
                    yield RawRecord(index, None, row, None)
        except (pa.ArrowException, OSError) as e:
            raise fail(e) from None

    return rows()


def _read_txt(text: str, file: str, text_split: str) -> Iterator[RawRecord]:
    """Plain text: the whole file, one record per line, or one per blank-line-separated block."""
    text = text.replace("\r\n", "\n")
    if text_split == "file":
        if text.strip():
            yield RawRecord(1, 1, {"text": text}, None)
        return
    yield from _read_txt_lines(text.split("\n"), file, text_split)


def _read_txt_lines(lines: Iterable[str], file: str, text_split: str) -> Iterator[RawRecord]:  # noqa: ARG001
    """One record per line or per blank-line-separated block, from a stream of lines."""
    index = 0
    block: list[str] = []
    block_start = 0
    for lineno, line in enumerate(chain((x.removesuffix("\r") for x in lines), [""]), start=1):
        if text_split == "line":
            if line.strip():
                index += 1
                yield RawRecord(index, lineno, {"text": line}, None)
        elif line.strip():
            if not block:
                block_start = lineno
            block.append(line)
        elif block:
            index += 1
            yield RawRecord(index, block_start, {"text": "\n".join(block)}, None)
            block = []


def positional_columns(path: str | Path, columns: dict[str, str] | None) -> bool:
    """`columns` given as positions ("0", "1", ...) for a CSV/TSV file: it has no header row, so it
    is read with `header=False` (its cells named "0", "1", ...)."""
    values = list((columns or {}).values())
    return (
        Path(path).suffix.lower() in (".csv", ".tsv")
        and bool(values)
        and all(isinstance(v, str) and v.isdigit() for v in values)
    )


def _reject(file: str, record: int, line: int | None, reason: str, raw: Any, message: str) -> Reject:
    return Reject(file=file, record=record, line=line, field=None, reason=reason, message=message, raw=raw)
