"""Pack tokenised samples into fixed-width rows, each sample attending only to itself.

Best-fit decreasing puts each sample (longest first) into the row with the least room that still
holds it, so rows come out nearly full and no compute is spent on padding. Position ids restart at
0 for every sample; with no attention mask, transformers reads the restarts as sample boundaries
(a block-diagonal causal mask for SDPA/eager, varlen kernels for flash-attn), so a packed row
trains exactly like its samples run one by one.

    one packed row of width 12 holding samples A (5 tokens), B (4) and padding (3):

    input_ids     a0 a1 a2 a3 a4 b0 b1 b2 b3 p  p  p
    position_ids   0  1  2  3  4  0  1  2  3  0  1  2
    labels         -  -  x  x  x  -  -  x  x  -  -  -     (- = -100; the first label of every
                                                            sample is -100, so no token is
    attention      a attends to a only                      trained to predict across a
    (causal, per   b attends to b only                      boundary)
     block)        p attends to p only (never trained)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmtune.tokenize.masking import IGNORE, Tokenized


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group sample indices into bins of total length <= capacity; deterministic for equal input.

    Each sample (longest first, then by index) goes to the bin with the least room that still holds
    it, the lowest-numbered such bin on a tie. The open bins are kept per room value (a heap of bin
    numbers each) under a count tree over 0..capacity, so finding the best bin costs O(log capacity)
    and a million samples pack in seconds, not minutes (a sorted list of bins costs O(bins) per
    insert).
    """
    import heapq

    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    size = 1
    while size < capacity + 1:
        size *= 2
    tree = [0] * (2 * size)  # tree[size + r]: open bins with r tokens of room; inner nodes: sums
    heaps: dict[int, list[int]] = {}
    bins: list[list[int]] = []

    def add(room: int, delta: int) -> None:
        i = size + room
        while i:
            tree[i] += delta
            i //= 2

    def least_room_at_least(n: int) -> int:
        i = size + n
        if tree[i]:
            return n
        while i > 1:
            if not i % 2 and tree[i + 1]:  # the right sibling covers larger rooms: descend into it
                i += 1
                while i < size:
                    i = 2 * i if tree[2 * i] else 2 * i + 1
                return i - size
            i //= 2
        return -1

    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sample {i} has {n} tokens, more than the row width {capacity}")
        room = least_room_at_least(n)
        if room >= 0:
            b = heapq.heappop(heaps[room])
            add(room, -1)
            bins[b].append(i)
        else:
            b, room = len(bins), capacity
            bins.append([i])
        heapq.heappush(heaps.setdefault(room - n, []), b)
        add(room - n, 1)
    return bins


@dataclass
class PackedRow:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]

    @property
    def real_tokens(self) -> int:
        return len(self.input_ids)


def pack_samples(samples: list[Tokenized], width: int) -> list[PackedRow]:
    """Rows of concatenated samples (not padded: the collator pads a batch to its widest row)."""
    rows = []
    for members in best_fit_decreasing([len(s.input_ids) for s in samples], width):
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for i in members:
            s = samples[i]
            ids += s.input_ids
            labels += [IGNORE, *s.labels[1:]]
            positions += range(len(s.input_ids))
        rows.append(PackedRow(ids, labels, positions))
    return rows


class PackedDataset:
    """Map-style dataset over packed rows (the Trainer shuffles rows, not samples, each epoch)."""

    def __init__(self, rows: list[PackedRow], width: int = 0):
        self.rows = rows
        self.width = width

    def stats(self) -> dict[str, Any]:
        return packing_stats(self.rows, self.width)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        r = self.rows[i]
        return {"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids}


@dataclass
class PackedCollator:
    """Pads rows to the widest in the batch (or always to `pad_to`: static shapes for torch.compile)
    with a padding "sample" of its own (positions restart at 0, labels -100).

    `attention_mask` only marks real tokens, for the Trainer's token count: LMTrainer drops it, so
    the model isolates samples by their restarting position ids."""

    pad_token_id: int
    pad_to: int | None = None

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = self.pad_to or max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        positions = torch.arange(width, dtype=torch.long).repeat(len(batch), 1)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            labels[row, :n] = torch.tensor(b["labels"])
            positions[row, :n] = torch.tensor(b["position_ids"])
            positions[row, n:] -= n
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": mask}


def packing_stats(rows: list[PackedRow], width: int) -> dict[str, Any]:
    real = sum(r.real_tokens for r in rows)
    return {"rows": len(rows), "row_width": width, "fill": round(real / max(1, len(rows) * width), 4)}
