"""`lmtune data inspect` in one streaming pass: counts, rejects by reason, token statistics and a
few samples, with memory flat in the number of records.

Records are read, validated and tokenised CHUNK at a time (the same masking call as training) and
only running sums are kept: counts, a bounded uniform sample of lengths for the percentiles (exact
up to SAMPLE lengths, a reservoir sample beyond), an exact power-of-two length histogram, the first
rejects and the samples asked for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.data.records import Conversation, Reject
from lmtune.data.sources import SourceSpec
from lmtune.datastore.stream import KEEP_REJECTS, RejectSink, StreamStats, stream_conversations
from lmtune.tokenize.dataset import masking_reject, percentiles
from lmtune.tokenize.masking import CHUNK, MaskingError, Tokenized, tokenize_conversations
from lmtune.tokenize.templates import check_system_role

SAMPLE = 100_000  # lengths kept for percentiles (4-8 MB at most)


@dataclass
class LengthSketch:
    """Length percentiles from a bounded reservoir (exact while n <= size) and an exact histogram
    of power-of-two buckets ("<=64", "<=128", ...)."""

    size: int = SAMPLE
    seen: int = 0
    sample: list[int] = field(default_factory=list)
    histogram: dict[int, int] = field(default_factory=dict)
    _rng: random.Random = field(default_factory=lambda: random.Random(0))

    def add(self, n: int) -> None:
        self.seen += 1
        if len(self.sample) < self.size:
            self.sample.append(n)
        else:
            j = self._rng.randrange(self.seen)
            if j < self.size:
                self.sample[j] = n
        bucket = max(64, 1 << max(0, n - 1).bit_length())
        self.histogram[bucket] = self.histogram.get(bucket, 0) + 1

    def percentiles(self) -> dict[str, int]:
        return percentiles(sorted(self.sample))

    def buckets(self) -> dict[str, int]:
        return {f"<={b}": self.histogram[b] for b in sorted(self.histogram)}


@dataclass
class InspectResult:
    report: dict[str, Any]
    # SFT: the first `keep` (source, Tokenized) and the example (1-based usable index, source, Tokenized);
    # the other tasks (inspect_text/_preference/_classification) put their own sample views there.
    samples: list[Any]
    example: tuple[int, str, Any] | None


def inspect_file(
    path: str | Path,
    tokenizer: Any,
    *,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    max_length: int = 1024,
    train_on: str = "all",
    keep: int = 0,
    example: int = 1,
    system_merge: str = "auto",
) -> InspectResult:
    """Stream `path` through reading, validation and masking; see the module docstring."""
    spec = SourceSpec(str(path), Path(path).name, format=format, columns=columns or {})
    sink = RejectSink()
    stats = StreamStats(str(path))
    sketch = LengthSketch()
    masking: list[Reject] = []
    mask_counts: dict[str, int] = {}
    totals = {"samples": 0, "truncated": 0, "tokens": 0, "trained_tokens": 0}
    kept: list[tuple[str, Tokenized]] = []
    shown: tuple[int, str, Tokenized] | None = None
    last: tuple[int, str, Tokenized] | None = None
    note: str | None = None

    def flush(chunk: list[Conversation]) -> None:
        nonlocal shown, last, note
        # Said once, from the first chunk holding a system message (never: an error there).
        note = note or check_system_role(tokenizer, chunk, system_merge)
        convs = [([m.to_dict() for m in c.messages], c.tools) for c in chunk]
        for conv, out in zip(
            chunk, tokenize_conversations(tokenizer, convs, max_length=max_length, train_on=train_on)
        ):
            if isinstance(out, MaskingError):
                mask_counts[out.reason] = mask_counts.get(out.reason, 0) + 1
                if len(masking) < KEEP_REJECTS:
                    masking.append(masking_reject(conv, out.reason, str(out)))
                continue
            totals["samples"] += 1
            totals["truncated"] += out.truncated
            totals["tokens"] += len(out.input_ids)
            totals["trained_tokens"] += out.num_trained
            sketch.add(len(out.input_ids))
            if len(kept) < keep:
                kept.append((conv.source, out))
            last = (totals["samples"], conv.source, out)
            if totals["samples"] == max(example, 1):
                shown = last

    chunk: list[Conversation] = []
    for conv in stream_conversations(spec, on_error="skip", sink=sink, stats=stats):
        chunk.append(conv)
        if len(chunk) == CHUNK:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    counts = dict(sink.counts)
    for reason, n in mask_counts.items():
        counts[reason] = counts.get(reason, 0) + n
    rejects = (sink.first + masking)[:KEEP_REJECTS]
    report: dict[str, Any] = {
        "file": str(path),
        "task": "sft",
        "format": stats.format,
        "records": stats.read,
        "usable": totals["samples"],
        "rejected": sum(counts.values()),
        "rejected_by_reason": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "rejects": [{k: v for k, v in r.to_dict().items() if k != "raw"} for r in rejects],
        "truncated": totals["truncated"],
        "tokens": totals["tokens"],
        "trained_tokens": totals["trained_tokens"],
        "length_percentiles": sketch.percentiles(),
        "length_histogram": sketch.buckets(),
    }
    if note:
        report["note"] = note
    if sketch.seen > sketch.size:
        report["length_percentiles_from"] = f"a uniform sample of {sketch.size:,} of {sketch.seen:,} samples"
    return InspectResult(report, kept, shown or last)
