"""Raw text for continued pretraining (`task: pretrain`): files in, `TextDocument`s out.

A document is the unit the tokenizer's separators go around (see `lmtune.tokenize.blocks`) and the
unit a validation split is drawn from, so no block mixes training and validation text:

- .txt: the whole file is one document (text_split: document), or every non-empty line is one
  (text_split: line; for files with one document per line, such as a dump of web pages);
- .json / .jsonl / .parquet / .csv / .tsv: one document per record, from its `text` field, or the
  field `columns: {text: body}` names (dotted paths reach nested fields: `columns: {text: doc.body}`).
  LLaMA-Factory's registry spells the same mapping `columns: {prompt: body}`, accepted as well.

Records without usable text (missing, empty, not a string) become `Reject`s, like every loader's.
A file of conversations or preference pairs is the wrong task altogether and fails once, up front,
with the task it belongs to, instead of rejecting every record.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from lmtune.data.formats import _MISSING, SFT_FORMATS, _resolve, detect_format
from lmtune.data.load import Opened, convert_raws, split_head, whole_file
from lmtune.data.readers import RawRecord, iter_raw_records, positional_columns
from lmtune.data.validate import RecordError
from lmtune.errors import DataError

TEXT_SPLITS = {"document": "file", "line": "line"}  # config name -> readers.py name
_TEXT_KEYS = ("text", "prompt")  # `columns:` keys naming the text field (prompt: LLaMA-Factory's name)


@dataclass
class TextDocument:
    """One document of raw text; `source` is "file.txt#N" (1-based record number in the file)."""

    text: str
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text}


def open_texts(
    path: str | Path,
    *,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    roles: dict[str, str] | None = None,  # noqa: ARG001 - the shared loader contract (lmtune.data.sources)
    on_error: str = "skip",
    system: str | None = None,  # noqa: ARG001 - no system prompt in raw text
    limit: int | None = None,
    text_split: str = "document",
) -> Opened:
    """Open `path` as text documents; `limit` caps the records (lines, in line mode) read.

    Each record comes as a TextDocument or the Reject saying why it is none: the checks, reject
    reasons and errors that load_texts, the pretraining token store (lmtune.datastore.text_store)
    and `lmtune data inspect` share. Only the first records are held (to tell conversations from raw
    text), so a corpus larger than RAM streams through.
    """
    file = str(path)
    _check_options(format, on_error, limit, text_split)
    field = _text_field(columns, file)
    is_txt = Path(path).suffix.lower() == ".txt"
    if is_txt and field != "text":
        raise DataError(
            "`columns:` does not apply to a .txt file: its whole text (or each line) is the document.",
            file=file,
            hint="remove `columns:` (--column) for this file.",
        )
    # a CSV/TSV file mapped by position (columns: {text: "1"}) has no header row
    header = not positional_columns(path, columns)
    raws = iter_raw_records(path, text_split=TEXT_SPLITS[text_split], header=header)
    head, every = split_head(islice(raws, limit))
    if not head:
        raise DataError(
            "the file holds no text." if is_txt else "the file holds no records.",
            file=file,
            hint="check that it is the file you meant.",
        )
    if not is_txt:
        _check_is_text(head, field, file)

    def convert(data: Any) -> TextDocument:
        return _document(data, field, columns)

    return Opened(file, "text", convert_raws(every, convert, file=file, on_error=on_error))


# every document and reject of open_texts, in a LoadResult (task: pretrain's loader)
load_texts = whole_file(open_texts)


def _check_options(format: str, on_error: str, limit: int | None, text_split: str) -> None:
    if format not in ("auto", "text"):
        raise DataError(
            f"format '{format}' is not raw text; task: pretrain reads plain text.",
            hint="use format: text (or auto) with a 'text' field per record or a .txt file; "
            f"for {format} data use the task it belongs to (sft, classification or preference).",
        )
    if on_error not in ("skip", "fail"):
        raise DataError(
            f"unknown on_error '{on_error}'.", hint="use skip (keep going, write rejects) or fail."
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(
            f"limit must be a whole number >= 1, got {limit!r}.", hint="leave it out to read every record."
        )
    if text_split not in TEXT_SPLITS:
        raise DataError(f"unknown text_split '{text_split}'.", hint="use document or line.")


def _text_field(columns: dict[str, str] | None, file: str) -> str:
    """The record field holding the text: 'text' unless `columns:` maps it."""
    cols = dict(columns or {})
    unknown = [k for k in cols if k not in _TEXT_KEYS]
    if unknown or len(cols) > 1:
        raise DataError(
            f"`columns:` for raw text maps only 'text', got {sorted(cols)}.",
            file=file,
            hint="write columns: {text: <the field holding your text>}.",
        )
    field = next(iter(cols.values()), "text")
    if not isinstance(field, str) or not field:
        raise DataError(f"`columns:` value for 'text' must be a field name, got {field!r}.", file=file)
    return field


def _check_is_text(raws: list[RawRecord], field: str, file: str) -> None:
    """Fail once when no record of the first 20 has the text field, naming what the file looks like."""
    samples = [r.data for r in raws if r.data is not None][:20]
    if not samples or any(_resolve(s, field) is not _MISSING for s in samples):
        return  # unparsable records are rejected one by one below
    keys = list(dict.fromkeys(k for s in samples for k in s))[:15]
    try:
        fmt = detect_format(samples, file=file)
    except DataError:
        fmt = None
    if fmt is None and {"messages", "conversations"} & set(keys) and "label" in keys:
        fmt = "preference"  # KTO: one answer per record with a true/false label
    if fmt in SFT_FORMATS:
        message = f"the records are {fmt} conversations or instructions (keys {keys}), not raw text."
        hint = "set `task: sft` for this data, or map the field holding plain text with columns: {text: <field>}."
    elif fmt == "preference":
        message = f"the records are preference data (keys {keys}), not raw text."
        hint = (
            "set `task: preference` for this data, or map a plain-text field with columns: {text: <field>}."
        )
    else:
        label = " A 'label' field suggests `task: classification`." if "label" in keys else ""
        message = f"the records have no '{field}' field (keys {keys}).{label}"
        hint = "name the field holding the text with columns: {text: <field>}, e.g. columns: {text: body}."
    raise DataError(message, file=file, hint=hint)


def _document(data: Any, field: str, columns: dict[str, str] | None) -> TextDocument:
    """The record's text as a document; RecordError when it is missing, not a string or empty."""
    value = _resolve(data, field)
    if value is _MISSING:
        mapped = " (mapped with `columns:`)" if columns else ""
        reason, message = (
            "missing_field",
            (
                f"the record has no '{field}' field{mapped}. Fix: add '{field}' to every record, "
                "or point `columns: {text: ...}` at the field holding the text."
            ),
        )
    elif not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        reason, message = (
            "wrong_type",
            f"'{field}' must be a string, got {kind} {shown}. Fix: store it as text.",
        )
    elif not value.strip():
        reason, message = "empty_text", f"'{field}' is empty. Fix: remove the record or fill in its text."
    else:
        return TextDocument(value)
    raise RecordError(reason, message, field)
