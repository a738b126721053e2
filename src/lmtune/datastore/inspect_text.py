"""`lmtune data inspect` for task: pretrain: documents read, framed and packed into blocks exactly as
continued pretraining packs them (`lmtune.tokenize.blocks`), in one streaming pass.

Only running sums are kept (documents, stream tokens, a length sketch) plus the first blocks asked
for, so a file of a million documents is inspected in flat memory. The block count follows from the
stream length alone: `cut_blocks` cuts the joined stream every `max_length` tokens and drops a last
block shorter than MIN_LAST_BLOCK, so the count is computed, not the blocks built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune.data.text import open_texts
from lmtune.datastore.inspect import InspectResult, LengthSketch
from lmtune.datastore.inspect_tasks import task_report
from lmtune.datastore.stream import RejectSink, StreamStats, tally
from lmtune.tokenize.blocks import MIN_LAST_BLOCK, separators, token_stream
from lmtune.tokenize.masking import Tokenized


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
    docs = open_texts(path, columns=columns, text_split=text_split).items
    sink = RejectSink()
    stats = StreamStats(str(path), "text")
    sketch = LengthSketch()
    tokens = 0
    want = max(keep, example, 1) * max_length  # stream tokens kept for the blocks shown
    prefix: list[int] = []
    before, after = separators(tokenizer)
    for ids in token_stream((doc.text for doc in tally(docs, sink, stats)), tokenizer):
        tokens += len(ids)
        sketch.add(len(ids))
        if len(prefix) < want:
            prefix.extend(ids[: want - len(prefix)])

    n_blocks, last, dropped = block_counts(tokens, max_length)
    shown = [prefix[i : i + max_length] for i in range(0, len(prefix), max_length)][:n_blocks]
    shown = [b for b in shown if len(b) >= MIN_LAST_BLOCK]
    samples = [(f"block {i}", Tokenized(input_ids=b, labels=list(b))) for i, b in enumerate(shown, 1)]
    report = task_report(
        path, "pretrain", "text", stats.read, stats.usable, sink, sketch, "documents",
        text_split=text_split, documents=stats.usable, tokens=tokens, trained_tokens=tokens - dropped,
        blocks=n_blocks, max_length=max_length, last_block_tokens=last, dropped_tokens=dropped, truncated=0,
        separators={
            "before": tokenizer.convert_ids_to_tokens(before),
            "after": tokenizer.convert_ids_to_tokens(after),
        },
    )  # fmt: skip
    pick = samples[example - 1] if 0 < example <= len(samples) else (samples[-1] if samples else None)
    shown_example = None
    if pick is not None:
        shown_example = (samples.index(pick) + 1, pick[0], pick[1])
    return InspectResult(report, samples[:keep], shown_example)
