"""`lmtune data inspect` for task: classification: the columns used, the label set and its ids (the
model's output order), records per label and the texts tokenised as the classifier's trainer
tokenises them (`lmtune.tokenize.classification`), in one streaming pass.

The columns are decided on the first 1,000 records exactly as `load_examples` decides them (names,
positions, or a CSV/TSV without a header row); every record then flows through the same conversion
and is tokenised CHUNK at a time. Only counts per label, a length sketch and the samples asked for
are kept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from lmtune.data.classification import (
    LabeledText,
    _check_options,
    _convert,
    detect_columns,
    imbalance_warning,
    sort_labels,
)
from lmtune.data.readers import iter_raw_records, positional_columns
from lmtune.data.records import Reject
from lmtune.datastore.inspect import InspectResult, LengthSketch
from lmtune.datastore.inspect_tasks import chunks, task_report
from lmtune.datastore.stream import RejectSink
from lmtune.errors import DataError
from lmtune.tokenize.classification import tokenize_examples

CHUNK = 1000
_DETECT = 1000  # records the columns are decided on, as detect_columns looks at


def inspect_classification(
    path: str | Path,
    tokenizer: Any,
    *,
    columns: dict[str, str] | None = None,
    labels: list[str] | None = None,
    max_length: int = 1024,
    keep: int = 0,
    example: int = 1,
) -> InspectResult:
    """Stream `path` as classification training reads it; see the module docstring.

    `labels` fixes the label set and order (as data.labels); records with another label are then
    counted as `unknown_label` rejects, as the trainer skips them.
    """
    file = str(path)
    _check_options("auto", columns, None, None, "skip", None, file)
    positional = positional_columns(file, columns)
    head = list(islice(iter_raw_records(path, header=not positional), _DETECT))
    if not head:
        raise DataError("the file holds no records.", file=file, hint="check that it is the file you meant.")
    mapping = detect_columns(head, columns, file=file)
    del head
    raws = iter_raw_records(path, header=not (positional or mapping.headerless))

    sink = RejectSink()
    sketch = LengthSketch()
    counts: Counter[str] = Counter()
    allowed = set(labels or [])
    totals = {"read": 0, "usable": 0, "tokens": 0, "truncated": 0}
    kept: list[tuple[LabeledText, dict[str, Any]]] = []
    pick: tuple[int, LabeledText, dict[str, Any]] | None = None
    name = Path(file).name

    def flush(chunk: list[LabeledText]) -> None:
        nonlocal pick
        encoded = tokenize_examples(chunk, tokenizer, max_length=max_length, label2id=None)
        totals["truncated"] += encoded.truncated
        for record, sample in zip(chunk, encoded.samples, strict=True):
            totals["usable"] += 1
            totals["tokens"] += len(sample["input_ids"])
            sketch.add(len(sample["input_ids"]))
            if len(kept) < keep:
                kept.append((record, sample))
            if pick is None or totals["usable"] <= max(example, 1):
                pick = (totals["usable"], record, sample)

    def usable() -> Iterator[LabeledText]:
        for raw in raws:
            totals["read"] += 1
            if raw.data is None:
                sink.add(raw.error)
                continue
            out = _convert(raw, mapping, file, True)
            if isinstance(out, Reject):
                sink.add(out)
                continue
            out.source = f"{name}#{raw.index}"
            if labels and out.label not in allowed:
                sink.add(
                    Reject(
                        file, raw.index, raw.line, "label", "unknown_label",
                        f"label '{out.label}' is not one of the run's labels ({', '.join(labels)}). "
                        "Fix: correct the label, or add it to data.labels (--labels).",
                        raw.data,
                    )
                )  # fmt: skip
                continue
            counts[out.label or ""] += 1
            yield out

    for chunk in chunks(usable(), CHUNK):
        flush(chunk)
    label_list = list(labels) if labels else sort_labels(counts)
    by_label = {label: counts.get(label, 0) for label in label_list}
    report = task_report(
        path, "classification", "classification", totals["read"], totals["usable"], sink, sketch, "texts",
        columns=mapping.describe(), headerless=mapping.headerless, labels=label_list,
        label_map={label: i for i, label in enumerate(label_list)},
        label_origin="--labels" if labels else "discovered, sorted", label_counts=by_label,
        tokens=totals["tokens"], truncated=totals["truncated"], max_length=max_length,
    )  # fmt: skip
    notes = []
    if len(label_list) < 2:
        notes.append(f"classification needs at least two labels, but this file has only {label_list}.")
    warning = imbalance_warning(by_label)
    if warning:
        notes.append(warning)
    if notes:
        report["note"] = " ".join(notes)
    label2id = report["label_map"]

    def view(record: LabeledText, sample: dict[str, Any]) -> dict[str, Any]:
        return {
            "source": record.source,
            "text": record.text,
            "text_pair": record.text_pair,
            "label": record.label,
            "label_id": label2id.get(record.label),
            "input_ids": list(sample["input_ids"]),
        }

    samples = [view(r, s) for r, s in kept]
    shown = (pick[0], pick[1].source, view(pick[1], pick[2])) if pick else None
    return InspectResult(report, samples, shown)  # type: ignore[arg-type]
