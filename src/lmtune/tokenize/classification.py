"""Labelled texts -> token ids + label id, and samples -> padded batches.

The tokenizer's own pair encoding is used (BERT: [CLS] a [SEP] b [SEP] with token type ids), so
a text pair is encoded as the model was pretrained to read one. No end-of-text token is added
for decoders: a decoder classifies from its last non-padding token, and that token is often the
padding token as well. Batches are padded to their longest sample (dynamic padding), not to
max_length, which on short texts like SST-2 is several times faster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmtune.data.classification import LabeledText
from lmtune.tokenize.dataset import percentiles


@dataclass
class ClassificationSet:
    samples: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    truncated: int = 0

    def stats(self) -> dict[str, Any]:
        lengths = sorted(len(s["input_ids"]) for s in self.samples)
        return {
            "samples": len(self.samples),
            "truncated": self.truncated,
            "tokens": sum(lengths),
            "length_percentiles": percentiles(lengths),
        }


def tokenize_examples(
    records: list[LabeledText],
    tokenizer: Any,
    *,
    max_length: int,
    label2id: dict[str, int] | None = None,
) -> ClassificationSet:
    """One sample per record: input_ids, attention_mask (token_type_ids where the tokenizer makes
    them) and `labels` (the label id), which is left out when `label2id` is None (prediction)."""
    out = ClassificationSet()
    encoded: list[dict[str, Any]] = [{} for _ in records]
    # Records with and without a second text are encoded in two calls (a mixed batch is refused).
    for paired in (False, True):
        idx = [i for i, r in enumerate(records) if (r.text_pair is not None) == paired]
        if not idx:
            continue
        texts = [records[i].text for i in idx]
        pairs = [records[i].text_pair for i in idx] if paired else None
        whole = tokenizer(texts, pairs, truncation=False)["input_ids"]
        cut = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in cut]
        for j, i in enumerate(idx):
            encoded[i] = {k: cut[k][j] for k in keys}
            out.truncated += len(whole[j]) > len(cut["input_ids"][j])
    for record, sample in zip(records, encoded, strict=True):
        if label2id is not None:
            sample["labels"] = label2id[record.label]  # type: ignore[index]
        out.samples.append(sample)
        out.sources.append(record.source)
    return out


class ListDataset:
    """A map-style dataset over sample dicts (what the Trainer's DataLoader iterates)."""

    def __init__(self, samples: list[dict[str, Any]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.samples[i]


def collator(tokenizer: Any) -> Any:
    """Pads input_ids / attention_mask / token_type_ids to the longest sample of the batch."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, padding="longest", return_tensors="pt")
