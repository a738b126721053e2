"""Which task a data file belongs to, so `lmtune data inspect` can show any file the way its
trainer will see it without the user naming the task first.

The task is read from the same signs each task's loader already checks, on the first records only
(the file is never read whole here):

- a .txt file is raw text (task: pretrain);
- chosen/rejected answers, OpenAI's preferred_output/non_preferred_output, StackExchange's
  response_j/response_k or a true/false `label` next to messages/completion: preference;
- conversations or instructions (openai, sharegpt, alpaca, dolly, prompt_completion): sft;
- a text column plus a label column (by name, or a CSV/TSV without a header row whose columns
  tell label from text): classification;
- a lone `text` field: pretrain.

`--column` mappings count as well: positions (`text=1`) or text_pair/label say classification
(a lone positional `text` says pretrain). A file that matches none gets one message that lists
what each task expects and the `--task` option.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from lmtune.data.readers import iter_raw_records, positional_columns
from lmtune.errors import DataError

T = TypeVar("T")
TASKS = ("sft", "pretrain", "preference", "classification")
_HEAD = 200  # records looked at (classification's header-less check compares the first row with these)
_CLASSIFICATION_KEYS = {"text", "text_pair", "label"}


def is_delimited(path: str | Path) -> bool:
    return Path(path).suffix.lower() in (".csv", ".tsv")


is_positional = positional_columns  # `columns` as positions: a CSV/TSV file without a header row


def detect_task(path: str | Path, columns: dict[str, str] | None = None) -> tuple[str, str]:
    """(task, why) for `path`; a DataError naming what each task expects when no task fits."""
    from lmtune.data.classification import detect_columns
    from lmtune.data.formats import SFT_FORMATS, detect_format
    from lmtune.data.preference import detect_preference_format

    file = str(path)
    cols = dict(columns or {})
    if Path(file).suffix.lower() == ".txt":
        return "pretrain", "a plain-text file"
    if is_positional(file, cols):
        if set(cols) == {"text"}:
            return "pretrain", "--column gives only a text position"
        return "classification", "--column gives positions (a CSV/TSV file without a header row)"
    if cols and set(cols) <= _CLASSIFICATION_KEYS and set(cols) & {"label", "text_pair"}:
        return "classification", "--column maps a label or text_pair"
    raws = list(islice(iter_raw_records(file), _HEAD))
    if not raws:
        raise DataError("the file holds no records.", file=file, hint="check that it is the file you meant.")
    samples = [r.data for r in raws if r.data is not None][:20]
    if not samples:
        first = next((r.error for r in raws if r.error), None)
        raise DataError(
            f"none of the first {len(raws)} records can be read"
            + (f" (record {first.record}: {first.message})" if first else "")
            + ".",
            file=file,
            hint="fix the file (see the message) before inspecting it.",
        )
    keys = list(dict.fromkeys(k for s in samples for k in s))
    try:
        fmt = detect_preference_format(samples, file=file, columns=cols)
        return "preference", f"{fmt} records"
    except DataError:
        pass
    sft_error: DataError | None = None
    try:
        fmt = detect_format(samples, file=file, columns=cols or None)
    except DataError as e:
        fmt, sft_error = None, e
    if fmt in SFT_FORMATS:
        return "sft", f"{fmt} records"
    if fmt == "preference":
        return "preference", "chosen/rejected records"
    try:
        mapping = detect_columns(raws, cols or None, file=file)
        return "classification", "a text column and a label column" + (
            ", no header row" if mapping.headerless else ""
        )
    except DataError:
        pass
    if fmt == "text":
        return "pretrain", "records with a 'text' field"
    raise DataError(
        f"cannot tell which task this file is for: the records have keys {keys[:15]}. "
        "sft reads conversations or instructions (messages, conversations, instruction/output, "
        "prompt/completion); preference reads chosen/rejected pairs (or KTO records with a true/false "
        "label); classification reads a text column and a label column; pretrain reads a 'text' field "
        "or a .txt file."
        + (f" (As SFT data: {sft_error.reason})" if sft_error is not None and "label" in keys else ""),
        file=file,
        hint="name the task with --task sft|pretrain|preference|classification, and map your field "
        "names with --column (e.g. --column text=body --column label=category).",
    )


def check_column_names(path: str | Path, columns: dict[str, str] | None) -> None:
    """A `--column role=name` whose name no record of the file's head has: one message naming the
    file's fields (and the closest one), before any task reads the file."""
    import difflib

    from lmtune.data.formats import _MESSAGE_FIELDS, _MISSING, _resolve

    file = str(path)
    given = dict(columns or {})
    digits = [f"{k}={v}" for k, v in given.items() if v.isdigit()]
    if is_delimited(file) and digits and len(digits) < len(given):
        names = [f"{k}={v}" for k, v in given.items() if not v.isdigit()]
        raise DataError(
            f"--column mixes positions ({', '.join(digits)}) and names ({', '.join(names)}).",
            file=file,
            hint="give every column by position from 0 (a file without a header row, e.g. --column label=0 "
            "--column text=1) or every column by its header name.",
        )
    if is_positional(file, columns):
        first = next((r.data for r in islice(iter_raw_records(file, header=False), _HEAD) if r.data), None)
        width = len(first or {})
        for role, pos in given.items():
            if int(pos) >= width:
                raise DataError(
                    f"--column {role}={pos}: this file has no header row and {width} columns, counted from 0.",
                    file=file,
                    hint=f"give positions from 0 to {width - 1}, e.g. --column label=0 --column text=1 "
                    "(data.columns: {label: 0, text: 1} in a config).",
                )
        return
    named = {k: v for k, v in given.items() if k not in _MESSAGE_FIELDS}
    if not named or Path(file).suffix.lower() == ".txt":
        return
    samples = [r.data for r in islice(iter_raw_records(file), _HEAD) if r.data is not None]
    if not samples:
        return  # the task's reader reports the unreadable records
    keys = list(dict.fromkeys(k for s in samples for k in s))
    for role, name in named.items():
        if any(_resolve(s, name) is not _MISSING for s in samples):
            continue
        close = difflib.get_close_matches(name, keys, n=1)
        did = f" Did you mean '{close[0]}'?" if close else ""
        raise DataError(
            f"--column {role}={name}: the file has no field '{name}'.{did}",
            file=file,
            hint=f"its fields are {', '.join(map(str, keys[:30]))}; name one of them, or give positions "
            "from 0 for a CSV/TSV file without a header row.",
        )


def check_task(task: str) -> str:
    if task not in ("auto", *TASKS):
        raise DataError(f"unknown task '{task}'.", hint=f"use auto or one of {', '.join(TASKS)}.")
    return task


def task_report(
    path: str | Path,
    task: str,
    fmt: str,
    read: int,
    usable: int,
    sink: Any,
    sketch: Any,
    unit: str,
    **fields: Any,
) -> dict[str, Any]:
    """A task's inspect report: the common fields, the task's own `fields`, then the length
    statistics of `sketch` (a LengthSketch of `unit`s). Every record rejected is the DataError the
    task's loader raises, not an empty report."""
    if not usable:
        from lmtune.data.load import _raise_nothing_valid

        _raise_nothing_valid(str(path), list(sink.first), read, sink.by_reason())
    report = common_report(path, task, fmt, read, usable, sink)
    report.update(fields, length_percentiles=sketch.percentiles(), length_histogram=sketch.buckets())
    if sketch.seen > sketch.size:
        report["length_percentiles_from"] = f"a uniform sample of {sketch.size:,} of {sketch.seen:,} {unit}"
    return report


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last may be shorter): what an inspect tokenises per call."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def common_report(path: str | Path, task: str, fmt: str, read: int, usable: int, sink: Any) -> dict[str, Any]:
    """The fields every task's report starts with (as the SFT inspect reports them)."""
    counts = sink.by_reason()
    return {
        "file": str(path),
        "task": task,
        "format": fmt,
        "records": read,
        "usable": usable,
        "rejected": sum(counts.values()),
        "rejected_by_reason": counts,
        "rejects": [{k: v for k, v in r.to_dict().items() if k != "raw"} for r in sink.first],
    }
