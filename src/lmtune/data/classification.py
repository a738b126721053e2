"""Labelled texts for task: classification, read from csv/tsv/json/jsonl/parquet files.

A record is a text (or a text pair, for entailment / paraphrase data) and a label. The columns
are named by `columns: {text, text_pair, label}` or found from common names, so the SST-2 files
(header "label<TAB>sentence" in one, "label<TAB>content" in the other) need no config. A CSV/TSV
file without a header row is recognised (its first row looks like the rows below it) and read by
position: `columns: {label: "0", text: "1"}`.

Labels are kept as strings ("1", "positive"): ints and strings then compare the same, and the
label set, its order and the counts are decided once for the run (`label_set`, `apply_labels`).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from lmtune.data.load import _reject_error
from lmtune.data.readers import RawRecord, iter_raw_records, positional_columns
from lmtune.data.records import LoadResult, Reject
from lmtune.errors import DataError

FIELDS = ("text", "text_pair", "label")
FORMATS = ("auto", "classification")
# Column names recognised without `columns:`, matched case-insensitively.
LABEL_NAMES = (
    "label", "labels", "class", "category", "target", "sentiment", "y", "gold_label", "intent",
    "polarity", "topic", "class_label", "tag", "emotion", "stance", "rating",
)  # fmt: skip
TEXT_NAMES = (
    "text", "sentence", "content", "review", "document", "input", "body", "comment", "tweet",
    "utterance", "message", "passage", "query", "question", "x",
)  # fmt: skip
# Text pairs (entailment, paraphrase, QA): the first pair whose two names are both present wins.
PAIR_NAMES = (
    ("text", "text_pair"), ("text_a", "text_b"), ("sentence1", "sentence2"), ("premise", "hypothesis"),
    ("question1", "question2"), ("question", "sentence"), ("query", "passage"),
)  # fmt: skip
IMBALANCE_RATIO = 5.0  # largest / smallest class count above this is warned about
_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")


@dataclass
class LabeledText:
    """One example: the text (and optional second text) and its label, as a string.

    `label` is None only when the file was read with `require_label=False` (`lmtune predict` on
    unlabelled data) and the record has no label.
    """

    text: str
    text_pair: str | None
    label: str | None
    source: str = ""  # "file.tsv#12" (record number, 1-based)
    line: int | None = None  # where the record starts in the file, for rejects found later


@dataclass
class ColumnMap:
    """Which of the file's columns hold the label, the text and the optional second text."""

    label: str | None
    text: str
    text_pair: str | None = None
    headerless: bool = False  # CSV/TSV without a header row: columns are positions "0", "1", ...
    detected: bool = True  # found from the names (False: all given by `columns:`)

    def describe(self) -> str:
        def name(col: str) -> str:
            return f"column {int(col) + 1}" if self.headerless else f"'{col}'"

        parts = [f"text {name(self.text)}"]
        if self.text_pair:
            parts.append(f"text_pair {name(self.text_pair)}")
        parts.append(f"label {name(self.label)}" if self.label else "no label column")
        how = "detected" if self.detected else "from columns:"
        return ", ".join(parts) + f" ({how}{', no header row' if self.headerless else ''})"


@dataclass
class ClassificationLoad(LoadResult):
    """A LoadResult that also says which columns were used."""

    columns: ColumnMap | None = None
    notes: list[str] = field(default_factory=list)


def load_examples(
    path: str | Path,
    *,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    roles: dict[str, str] | None = None,
    on_error: str = "skip",
    system: str | None = None,
    limit: int | None = None,
    text_split: str = "document",  # noqa: ARG001 - the shared loader contract (lmtune.data.sources)
    require_label: bool = True,
) -> ClassificationLoad:
    """Read `path` into LabeledText records; bad records become Rejects (or a DataError under
    on_error: fail). `require_label=False` also accepts records without a label (label None)."""
    file = str(path)
    _check_options(format, columns, roles, system, on_error, limit, file)
    # Positions in `columns:` say the file has no header row: read it so from the start.
    positional = positional_columns(file, columns)
    raws = list(islice(iter_raw_records(path, header=not positional), limit))
    if not raws:
        raise DataError("the file holds no records.", file=file, hint="check that it is the file you meant.")
    mapping = detect_columns(raws, columns, file=file, require_label=require_label)
    if mapping.headerless and not positional:  # the "header" was the first record
        raws = list(islice(iter_raw_records(path, header=False), limit))

    result = ClassificationLoad(path=file, format="classification", total=len(raws), columns=mapping)
    name = Path(path).name
    for raw in raws:
        reject = raw.error
        if raw.data is not None:
            example = _convert(raw, mapping, file, require_label)
            if isinstance(example, LabeledText):
                example.source = f"{name}#{raw.index}"
                result.records.append(example)
                continue
            reject = example
        assert reject is not None
        if on_error == "fail":
            raise _reject_error(reject)
        result.rejects.append(reject)
    if not result.records:
        reasons = Counter(r.reason for r in result.rejects)
        first = result.rejects[0]
        # the first reject's message carries its fix; the column mapping is the other usual cause
        raise DataError(
            f"no usable records: all {result.total} were rejected "
            f"({', '.join(f'{n} {r}' for r, n in reasons.most_common(3))}; the file's columns are mapped as: "
            f"{mapping.describe()}, see `columns:`). First: record {first.record}: {first.message}",
            file=file,
        )
    return result


# ---------------------------------------------------------------- columns


def _other_task(keys: list[str]) -> str:
    """A sentence naming the task a label-less file belongs to, when its keys say so."""
    names = {k.lower() for k in keys}
    if {"chosen", "rejected"} <= names:
        return " These are chosen/rejected answer pairs: preference data, for `task: preference`."
    if names & {"messages", "conversations", "instruction"}:
        return " These are conversations or instructions: SFT data, for `task: sft`."
    return ""


def detect_columns(
    raws: list[RawRecord], columns: dict[str, str] | None, *, file: str, require_label: bool = True
) -> ColumnMap:
    """Decide which columns hold text / text_pair / label, from `columns:` or the names.

    Raises a DataError naming the columns found when the choice is missing or ambiguous.
    """
    columns = dict(columns or {})
    rows = [r.data for r in raws if r.data is not None][:1000]
    if not rows:
        raise DataError(
            f"no record of the file could be parsed ({raws[0].error.message if raws[0].error else ''}).",
            file=file,
        )
    names = list(rows[0])
    delimited = _is_delimited(file)
    positional = bool(columns) and all(v.isdigit() for v in columns.values())
    if delimited and (positional or (not columns and _first_row_is_data(names, rows[1:]))):
        return _headerless_columns(names, rows, columns, file=file, require_label=require_label)
    if positional and not delimited:
        raise DataError(
            f"`columns:` gives positions ({columns}), which only a CSV/TSV file without a header has.",
            file=file,
            hint=f"name the fields instead; this file's fields are {', '.join(names)}.",
        )
    keys = list(dict.fromkeys(k for row in rows[:50] for k in row))
    for role, col in columns.items():
        if col not in keys:
            close = difflib.get_close_matches(col, keys, n=1)
            did = f" Did you mean '{close[0]}'?" if close else ""
            raise DataError(
                f"`columns:` maps {role} to '{col}', which the file does not have.{did}",
                file=file,
                hint=f"the file's columns are {', '.join(keys)}.",
            )
    lower = {k.lower(): k for k in keys}
    label = columns.get("label") or _pick_by_name(keys, LABEL_NAMES, "label", file, exclude=columns.values())
    if label is None and require_label:
        raise DataError(
            f"no label column: the columns are {', '.join(keys)}, and none has a usual label name "
            f"({', '.join(LABEL_NAMES[:8])} ...).{_other_task(keys)}",
            file=file,
            hint="name it in the config, e.g. data.columns: {label: <column>, text: <column>}.",
        )
    text, pair = columns.get("text"), columns.get("text_pair")
    if text is None:
        for a, b in PAIR_NAMES:
            if a in lower and b in lower and label not in (lower[a], lower[b]):
                text, pair = lower[a], pair or lower[b]
                break
    if text is None:
        used = {label, pair, *columns.values()}
        text = _pick_by_name([k for k in keys if k not in used], TEXT_NAMES, "text", file)
    if text is None:
        strings = [k for k in keys if k not in (label, pair) and isinstance(rows[0].get(k), str)]
        if len(strings) != 1:
            raise DataError(
                f"cannot tell which column is the text: the columns are {', '.join(keys)}"
                + (f" (label: '{label}')" if label else "")
                + (f", and {len(strings)} of the others hold strings." if strings else "."),
                file=file,
                hint="name it in the config, e.g. data.columns: {text: <column>"
                + (f", label: {label}" if label else "")
                + "}.",
            )
        text = strings[0]
    return ColumnMap(label=label, text=text, text_pair=pair, detected=not {"text", "label"} <= set(columns))


def _is_delimited(file: str) -> bool:
    return Path(file).suffix.lower() in (".csv", ".tsv")


def _pick_by_name(
    keys: list[str], wanted: tuple[str, ...], role: str, file: str, exclude: Iterable[str] = ()
) -> str | None:
    """The one key with a usual name for `role`; several are ambiguous and refused."""
    skip = set(exclude)
    hits = [k for k in keys if k.lower() in wanted and k not in skip]
    if len(hits) > 1:
        raise DataError(
            f"several columns could be the {role}: {', '.join(hits)}.",
            file=file,
            hint=f"say which one in the config, e.g. data.columns: {{{role}: {hits[0]}}}.",
        )
    return hits[0] if hits else None


def _first_row_is_data(header: list[str], rows: list[dict[str, Any]]) -> bool:
    """A CSV/TSV "header" that is really the first record.

    No cell has a usual column name, and some cell is a number, or a value that the rows below
    repeat in that column (a label such as "0" or "positive").
    """
    known = {n.lower() for n in (*LABEL_NAMES, *TEXT_NAMES, *FIELDS)} | {n for p in PAIR_NAMES for n in p}
    if any(h.lower() in known for h in header):
        return False
    for h in header:
        below = {str(row.get(h, "")) for row in rows[:200]}
        if _NUMBER.match(h.strip()) or h in below or len(h.split()) > 4:
            return True
    return False


def _headerless_columns(
    first: list[str], rows: list[dict[str, Any]], columns: dict[str, str], *, file: str, require_label: bool
) -> ColumnMap:
    """Columns by position: from `columns:`, or for two columns, the label is the one with fewer
    distinct values."""
    width = len(first)
    for role, pos in columns.items():
        if not pos.isdigit() or int(pos) >= width:
            raise DataError(
                f"`columns:` (--column) gives {role} as '{pos}', but this file has no header row and {width} "
                "columns, counted from 0.",
                file=file,
                hint=f"give positions from 0 to {width - 1}, e.g. data.columns: {{label: '0', text: '1'}} "
                "(inspect: --column label=0 --column text=1).",
            )
    if "text" in columns and ("label" in columns or not require_label):
        return ColumnMap(columns.get("label"), columns["text"], columns.get("text_pair"), True, False)
    values = [[row.get(h) for row in rows] for h in first]
    if width == 2 and not columns:
        distinct = [len(set(v)) for v in values]
        label = 0 if distinct[0] < distinct[1] else 1
        if distinct[label] < distinct[1 - label] and distinct[label] <= max(20, len(rows) // 2):
            return ColumnMap(str(label), str(1 - label), None, True, True)
    raise DataError(
        f"the file has no header row ({width} columns, first row {first[:4]}), and which column is "
        "the text and which the label cannot be told apart.",
        file=file,
        hint="give their positions (from 0) in the config, e.g. data.columns: {label: '0', text: '1'}, "
        "or add a header row such as label<TAB>text.",
    )


# ---------------------------------------------------------------- records


def label_string(value: Any) -> str | None:
    """A label as its string: 1 -> "1", 1.0 -> "1", True -> "true", " pos " -> "pos"; None when
    it is not a single value (a list, a dict) or empty."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value.strip() or None
    return None


def _convert(raw: RawRecord, m: ColumnMap, file: str, require_label: bool) -> LabeledText | Reject:
    data = raw.data or {}

    def reject(col: str, reason: str, message: str) -> Reject:
        return Reject(file, raw.index, raw.line, col, reason, message, data)

    texts: list[str | None] = []
    for col in (m.text, m.text_pair):
        if col is None:
            texts.append(None)
            continue
        value = data.get(col)
        if value is None:
            return reject(col, "missing_field", f"record {raw.index} has no '{col}'. Fix: add the text.")
        if not isinstance(value, str):
            return reject(
                col,
                "not_text",
                f"'{col}' of record {raw.index} is a {type(value).__name__}, not text. "
                "Fix: store the text as a string, or map the text column with data.columns.",
            )
        if not value.strip():
            return reject(
                col,
                "empty_text",
                f"'{col}' of record {raw.index} is empty. Fix: add the text or delete the record.",
            )
        texts.append(value)
    label = None
    if m.label is not None:
        value = data.get(m.label)
        label = label_string(value)
        if label is None and (require_label or value not in (None, "")):
            reason = "missing_label" if value in (None, "") else "bad_label"
            return reject(
                m.label,
                reason,
                f"record {raw.index} has no label in '{m.label}'. Fix: give every record a label."
                if reason == "missing_label"
                else f"the label of record {raw.index} is a {type(value).__name__} ({value!r:.60}), not one "
                "value. Fix: give one string or integer label per record.",
            )
    return LabeledText(texts[0] or "", texts[1], label, line=raw.line)


def _check_options(
    format: str,
    columns: dict[str, str] | None,
    roles: dict[str, str] | None,
    system: str | None,
    on_error: str,
    limit: int | None,
    file: str,
) -> None:
    if format not in FORMATS:
        raise DataError(
            f"format '{format}' is not a classification format.",
            file=file,
            hint="use format: auto or classification (text, optional text_pair, label columns).",
        )
    for key, value in (columns or {}).items():
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            did = f" Did you mean '{close[0]}'?" if close else ""
            raise DataError(
                f"`columns:` maps '{key}', which is not a classification field.{did}",
                file=file,
                hint="the keys are text, text_pair and label; the values are your file's column names "
                "(or positions '0', '1' ... for a file without a header row).",
            )
        if not isinstance(value, str) or not value:
            raise DataError(f"`columns:` value for '{key}' must be a column name, got {value!r}.", file=file)
    if roles:
        raise DataError("data.roles does not apply to classification data.", file=file, hint="remove it.")
    if system is not None:
        raise DataError(
            "data.system (a system prompt) does not apply to classification data.",
            file=file,
            hint="remove it.",
        )
    if on_error not in ("skip", "fail"):
        raise DataError(f"unknown on_error '{on_error}'.", hint="use skip or fail.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a whole number >= 1, got {limit!r}.", file=file)


# ---------------------------------------------------------------- the run's label set


def sort_labels(labels: Iterable[str]) -> list[str]:
    """Numeric order when every label is an integer ("-1" < "0" < "10"), else alphabetical."""
    unique = set(labels)
    if unique and all(re.fullmatch(r"[+-]?\d+", x) for x in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def apply_labels(
    records: list[LabeledText], labels: list[str], paths: dict[str, str] | None = None
) -> tuple[list[LabeledText], list[Reject]]:
    """Keep the records whose label is in `labels`; the others become `unknown_label` Rejects.

    `paths` maps a file name (as in `source`) back to the path given in the config.
    """
    allowed = set(labels)
    kept: list[LabeledText] = []
    rejects: list[Reject] = []
    for r in records:
        if r.label in allowed:
            kept.append(r)
            continue
        name, _, number = r.source.rpartition("#")
        rejects.append(
            Reject(
                file=(paths or {}).get(name, name),
                record=int(number) if number.isdigit() else None,
                line=r.line,
                field="label",
                reason="unknown_label",
                message=f"label '{r.label}' is not one of the run's labels ({', '.join(labels)}). "
                "Fix: correct the label, or add it to data.labels.",
                raw={"text": r.text, "text_pair": r.text_pair, "label": r.label},
            )
        )
    return kept, rejects


def label_counts(records: Iterable[LabeledText], labels: list[str] | None = None) -> dict[str, int]:
    """Records per label, in `labels` order (zero counts kept) or most frequent first."""
    counts = Counter(r.label for r in records if r.label is not None)
    if labels is not None:
        return {label: counts.get(label, 0) for label in labels}
    return dict(counts.most_common())


def imbalance_warning(counts: dict[str, int], ratio: float = IMBALANCE_RATIO) -> str | None:
    """A sentence when the largest class has more than `ratio` times the smallest's records."""
    if len(counts) < 2:
        return None
    big = max(counts, key=lambda k: counts[k])
    small = min(counts, key=lambda k: counts[k])
    if counts[small] == 0:
        return f"label '{small}' has no training records, so the model cannot learn it."
    if counts[big] > ratio * counts[small]:
        return (
            f"the labels are heavily imbalanced: '{big}' has {counts[big]} records, '{small}' only "
            f"{counts[small]} ({counts[big] / counts[small]:.0f}x). Accuracy then rewards predicting "
            f"'{big}'; watch macro-F1 and the per-class recall, or rebalance the data."
        )
    return None


def sorted_warning(labels_in_order: list[str | None]) -> str | None:
    """A sentence when the records come in long runs of one label (a file sorted by label).

    Sorted: at most two runs per label (a shuffled file of n records has about n(1 - 1/k) runs).
    """
    values = [x for x in labels_in_order if x is not None]
    kinds = len(set(values))
    if kinds < 2 or len(values) < 4 * kinds:
        return None
    runs = 1 + sum(a != b for a, b in zip(values, values[1:]))
    if runs > 2 * kinds:
        return None
    return (
        f"the training file is sorted by label ({runs} runs of one label over {len(values)} records) "
        "and data.shuffle is false, so training sees one class after the other and ends biased to the "
        "last. Set data.shuffle: true, or shuffle the file."
    )
