"""`lmtune data inspect` for task: pretrain: documents read, framed and packed into blocks exactly as
continued pretraining packs them (`lmtune.tokenize.blocks`), in one streaming pass.

Only running sums are kept (documents, stream tokens, a length sketch) plus the first blocks asked
for, so a file of a million documents is inspected in flat memory. The block count follows from the
stream length alone: `cut_blocks` cuts the joined stream every `max_length` tokens and drops a last
block shorter than MIN_LAST_BLOCK, so the count is computed, not the blocks built.
"""

from __future__ import annotations

from itertools import chain, islice
from pathlib import Path
from typing import Any

from lmtune.data.records import Reject
from lmtune.data.text import TEXT_SPLITS, _check_is_text, _document, _text_field
from lmtune.data.validate import RecordError
from lmtune.datastore.inspect import InspectResult, LengthSketch
from lmtune.datastore.inspect_tasks import common_report, is_positional
from lmtune.datastore.stream import RejectSink
from lmtune.errors import DataError
from lmtune.tokenize.blocks import MIN_LAST_BLOCK, separators, token_stream
from lmtune.tokenize.masking import Tokenized

_BATCH_DOCS = 1000  # documents tokenised per call (token_stream batches by characters within it)
_BATCH_CHARS = 1_000_000


def block_counts(tokens: int, max_length: int) -> tuple[int, int, int]:
    """(blocks, last block's tokens, dropped tokens) of a `tokens`-long stream, as `cut_blocks` cuts it."""
    full, rest = divmod(tokens, max_length)
    if rest == 0:
        return full, (max_length if full else 0), 0
    if rest >= MIN_LAST_BLOCK:
        return full + 1, rest, 0
    return full, (max_length if full else 0), rest


def inspect_text(
    path: str | Path,
    tokenizer: Any,
    *,
    columns: dict[str, str] | None = None,
    max_length: int = 1024,
    text_split: str = "document",
    keep: int = 0,
    example: int = 1,
) -> InspectResult:
    """Stream `path` as pretraining reads it; see the module docstring."""
    file = str(path)
    if text_split not in TEXT_SPLITS:
        raise DataError(f"unknown text_split '{text_split}'.", hint="use document or line.")
    field = _text_field(columns, file)
    is_txt = Path(file).suffix.lower() == ".txt"
    if is_txt and field != "text":
        raise DataError(
            "`columns:` (--column) does not apply to a .txt file: its whole text (or each line) is the document.",
            file=file,
            hint="remove the column mapping for this file.",
        )
    raws = iter_raw(file, columns, text_split)
    head = list(islice(raws, 20))
    if not head:
        raise DataError(
            "the file holds no text." if is_txt else "the file holds no records.",
            file=file,
            hint="check that it is the file you meant.",
        )
    if not is_txt:
        _check_is_text(head, field, file)

    sink = RejectSink()
    sketch = LengthSketch()
    totals = {"read": 0, "documents": 0, "tokens": 0}
    want = max(keep, example, 1) * max_length  # stream tokens kept for the blocks shown
    prefix: list[int] = []
    before, after = separators(tokenizer)
    batch: list[str] = []
    chars = 0

    def flush() -> None:
        nonlocal batch, chars
        for ids in token_stream(batch, tokenizer):
            totals["documents"] += 1
            totals["tokens"] += len(ids)
            sketch.add(len(ids))
            if len(prefix) < want:
                prefix.extend(ids[: want - len(prefix)])
        batch, chars = [], 0

    for raw in chain(head, raws):
        totals["read"] += 1
        if raw.data is None:
            sink.add(raw.error)
            continue
        try:
            doc = _document(raw.data, field, columns)
        except RecordError as e:
            sink.add(Reject(file, raw.index, raw.line, e.field, e.reason, str(e), raw.data))
            continue
        batch.append(doc.text)
        chars += len(doc.text)
        if len(batch) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
            flush()
    if batch:
        flush()
    if not totals["documents"]:
        from lmtune.data.load import _raise_nothing_valid

        _raise_nothing_valid(file, list(sink.first), totals["read"])

    n_blocks, last, dropped = block_counts(totals["tokens"], max_length)
    shown = [prefix[i : i + max_length] for i in range(0, len(prefix), max_length)][:n_blocks]
    shown = [b for b in shown if len(b) >= MIN_LAST_BLOCK]
    samples = [(f"block {i}", Tokenized(input_ids=b, labels=list(b))) for i, b in enumerate(shown, 1)]
    report = common_report(path, "pretrain", "text", totals["read"], totals["documents"], sink)
    report.update(
        {
            "text_split": text_split,
            "documents": totals["documents"],
            "tokens": totals["tokens"],
            "trained_tokens": totals["tokens"] - dropped,
            "blocks": n_blocks,
            "max_length": max_length,
            "last_block_tokens": last,
            "dropped_tokens": dropped,
            "truncated": 0,
            "separators": {
                "before": tokenizer.convert_ids_to_tokens(before),
                "after": tokenizer.convert_ids_to_tokens(after),
            },
            "length_percentiles": sketch.percentiles(),
            "length_histogram": sketch.buckets(),
        }
    )
    if sketch.seen > sketch.size:
        report["length_percentiles_from"] = (
            f"a uniform sample of {sketch.size:,} of {sketch.seen:,} documents"
        )
    pick = samples[example - 1] if 0 < example <= len(samples) else (samples[-1] if samples else None)
    shown_example = None
    if pick is not None:
        shown_example = (samples.index(pick) + 1, pick[0], pick[1])
    return InspectResult(report, samples[:keep], shown_example)


def iter_raw(file: str, columns: dict[str, str] | None, text_split: str) -> Any:
    """The raw records as pretraining reads them (a CSV/TSV mapped by position has no header row)."""
    from lmtune.data.readers import iter_raw_records

    header = not is_positional(file, columns)
    return iter_raw_records(file, text_split=TEXT_SPLITS[text_split], header=header)
