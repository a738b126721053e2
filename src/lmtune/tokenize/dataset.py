"""Turn canonical conversations into training samples, and samples into padded batches.

A sample that cannot be trained on (nothing left after truncation, a template that cannot be
masked) becomes a Reject with the record's source, so the rejects file accounts for every record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmtune.data.records import Conversation, Reject
from lmtune.tokenize.masking import IGNORE, MaskingError, Tokenized, tokenize_conversation


@dataclass
class TokenizedSet:
    samples: list[Tokenized] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

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
    records: list[Conversation], tokenizer: Any, *, max_length: int, train_on: str
) -> TokenizedSet:
    out = TokenizedSet()
    for conv in records:
        messages = [m.to_dict() for m in conv.messages]
        try:
            sample = tokenize_conversation(
                tokenizer, messages, tools=conv.tools, max_length=max_length, train_on=train_on
            )
        except MaskingError as err:
            file, _, num = conv.source.rpartition("#")
            out.rejects.append(
                Reject(
                    file=file or conv.source,
                    record=int(num) if num.isdigit() else None,
                    line=None,
                    field="messages",
                    reason=err.reason,
                    message=str(err),
                    raw=conv.to_dict(),
                )
            )
            continue
        out.samples.append(sample)
        out.sources.append(conv.source)
    return out


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
