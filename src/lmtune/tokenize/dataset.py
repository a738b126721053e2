"""Turn canonical conversations into training samples, and samples into padded batches.

A sample that cannot be trained on (nothing left after truncation, a template that cannot be
masked) becomes a Reject with the record's source, so the rejects file accounts for every record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.data.records import Conversation, Reject
from lmtune.errors import DataError
from lmtune.tokenize.cache import cached_outcomes
from lmtune.tokenize.masking import IGNORE, MaskingError, Tokenized, tokenize_conversations
from lmtune.tokenize.templates import check_system_role


@dataclass
class TokenizedSet:
    samples: list[Tokenized] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    # Where the set was cached and whether it came from there (not part of equality: a cached set
    # equals the freshly computed one).
    cache_file: Path | None = field(default=None, compare=False, repr=False)
    cache_hit: bool = field(default=False, compare=False, repr=False)

    def stats(self) -> dict[str, Any]:
        lengths = sorted(len(s.input_ids) for s in self.samples)
        trained = sum(s.num_trained for s in self.samples)
        return {
            "samples": len(self.samples),
            "rejected": len(self.rejects),
            "truncated": sum(s.truncated for s in self.samples),
            "tokens": sum(lengths),
            "trained_tokens": trained,
            "length_percentiles": percentiles(lengths),
        }


def percentiles(sorted_values: list[int], points: tuple[int, ...] = (0, 50, 90, 99, 100)) -> dict[str, int]:
    if not sorted_values:
        return {}
    n = len(sorted_values)
    return {f"p{p}": sorted_values[min(n - 1, round(p / 100 * (n - 1)))] for p in points}


def tokenize_records(
    records: list[Conversation],
    tokenizer: Any,
    *,
    max_length: int,
    train_on: str,
    cache_dir: str | Path | None = None,
    system_merge: str = "auto",
) -> TokenizedSet:
    """Tokenise and mask every record; the ones that cannot be trained on become rejects.

    With `cache_dir`, the result is looked up under a hash of the records, the tokenizer and the
    settings (lmtune.tokenize.cache) and stored there after computing, so the same data is
    tokenised once; `default_cache_dir()` gives the standard place.
    """

    def compute() -> list[Tokenized | MaskingError]:
        convs = [([m.to_dict() for m in conv.messages], conv.tools) for conv in records]
        return tokenize_conversations(tokenizer, convs, max_length=max_length, train_on=train_on)

    check_system_role(tokenizer, records, system_merge)  # "never" on a template without one: ConfigError
    out = TokenizedSet()
    if cache_dir is None or not records:
        outcomes = compute()
    else:
        outcomes, out.cache_file, out.cache_hit = cached_outcomes(
            cache_dir, records, tokenizer, max_length=max_length, train_on=train_on, compute=compute
        )
    raise_if_template_fails_everywhere(records, outcomes)
    for conv, outcome in zip(records, outcomes):
        if isinstance(outcome, MaskingError):
            out.rejects.append(masking_reject(conv, outcome.reason, str(outcome)))
        else:
            out.samples.append(outcome)
            out.sources.append(conv.source)
    return out


def raise_if_template_fails_everywhere(records: list[Conversation], outcomes: list[Any]) -> None:
    """One clear error instead of a reject per record when the chat template raises on every record
    (a template that cannot render this kind of data at all, e.g. a tool-use-only template)."""
    if len(records) > 1 and all(
        isinstance(o, MaskingError) and o.reason == "template_error" for o in outcomes
    ):
        file = records[0].source.rpartition("#")[0] or records[0].source
        raise DataError(
            f"the chat template fails on every one of the {len(records)} records; the first: {outcomes[0]}",
            file=file or None,
        )


def masking_reject(conv: Conversation, reason: str, message: str) -> Reject:
    """The Reject for a record that cannot be masked, pointing back at its file and record number."""
    file, _, num = conv.source.rpartition("#")
    return Reject(
        file=file or conv.source,
        record=int(num) if num.isdigit() else None,
        line=None,
        field="messages",
        reason=reason,
        message=message,
        raw=conv.to_dict(),
    )


class SampleDataset:
    """A map-style dataset over tokenised samples (what the Trainer's DataLoader iterates)."""

    def __init__(self, samples: list[Tokenized]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        s = self.samples[i]
        return {"input_ids": s.input_ids, "labels": s.labels}


@dataclass
class PadCollator:
    """Right-pads a batch to its longest sample; padding is never attended to nor trained."""

    pad_token_id: int

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            labels[row, :n] = torch.tensor(b["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
