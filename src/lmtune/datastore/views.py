"""Training and validation views of a memory-mapped store: map-style datasets that read a sample's
tokens only when the DataLoader asks for it.

Why views and not lists: a split is two arrays of row numbers over the same Arrow files, so a
training set of any size costs ~13 bytes per record in RAM (row number, length, flags), never its
tokens. Under a distributed launch every rank maps the same files; the sampler (the Trainer's,
sharded by accelerate) hands each rank its own indices and `__getitem__` reads only those rows.

    store rows      0   1   2   3   4   5   6   7        (rows.npz length: -1 = masking reject)
    length          9  12  -1   7  30   5  -1  11
    split (seed)    t   v   t   t   t   v   t   t        split_indices: the rule of split_records
    train view      index [0, 3, 4, 7]   lengths [9, 7, 30, 11]   rejected 2 (rows 2, 6)
    val view        index [1, 5]         lengths [12, 5]          rejected 0
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmtune.data.records import Reject
from lmtune.datastore.store import TokenizedStore, length_stats


@dataclass
class StoreSamples:
    """Tokenised samples of a store (all rows, or one part of a split), read on demand.

    `index` holds the Arrow row of each sample (in record order), `lengths` its token count:
    packing plans and length-grouped sampling use these without reading a token."""

    table: Any  # datasets.Dataset with every row of the store (input_ids, labels)
    index: np.ndarray  # int64: the store row of each usable sample
    lengths: np.ndarray  # int32: tokens of each usable sample
    trained_tokens: int
    truncated: int
    rejected_rows: np.ndarray  # int64: rows of this part whose masking failed
    path: Path | None = None  # the store folder (where packing plans are cached)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        row = self.table[int(self.index[i])]
        return {"input_ids": row["input_ids"], "labels": row["labels"]}

    def fetch(self, positions: list[int]) -> dict[str, list[list[int]]]:
        """Several samples in one read (a packed row's members): {"input_ids": [...], "labels": [...]}."""
        return self.table[self.index[positions].tolist()]

    def stats(self) -> dict[str, Any]:
        """The fields of lmtune.tokenize.dataset.TokenizedSet.stats, from the arrays alone."""
        return length_stats(
            np.asarray(self.lengths),
            trained=self.trained_tokens,
            truncated=self.truncated,
            rejected=len(self.rejected_rows),
        )


def view(st: TokenizedStore, rows: np.ndarray | None = None) -> StoreSamples:
    """The samples of `rows` (sorted store rows; None: every row), masking rejects left out."""
    length = st.rows["length"]
    rows = np.arange(len(length), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    part = length[rows]
    ok = part >= 0
    return StoreSamples(
        table=st.full,
        index=rows[ok],
        lengths=part[ok].astype(np.int32),
        trained_tokens=int(st.rows["trained"][rows][ok].sum()),
        truncated=int(st.rows["truncated"][rows][ok].sum()),
        rejected_rows=rows[~ok],
        path=st.path,
    )


def split_indices(n: int, *, val_size: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows), sorted: exactly the split lmtune.data.split.split_records makes
    of n records (the same seeded shuffle), held as arrays instead of a list of records."""
    from lmtune.data.split import _count, split_records

    n_val = _count(val_size, n, "val_size")
    if n_val >= n and n_val:
        split_records(list(range(n)), val_size=val_size, seed=seed)  # its "leaving no training data" error
    order = np.arange(n, dtype=np.int64)
    random.Random(seed).shuffle(order)  # type: ignore[arg-type]  # the same swaps as on a list
    val = np.sort(order[:n_val])
    return np.sort(order[n_val:]), val


def store_rejects(st: TokenizedStore) -> tuple[list[Reject], list[Reject]]:
    """(rejects while reading, rejects at masking in row order), from the store's rejects.jsonl."""
    every = list(st.rejects())
    n = st.meta["read_rejected"]
    return every[:n], every[n:]


def part_rejects(st: TokenizedStore, masking: list[Reject], part: StoreSamples) -> list[Reject]:
    """The masking rejects whose rows belong to `part` (in row order)."""
    bad = np.flatnonzero(st.rows["length"] < 0)
    keep = np.isin(bad, part.rejected_rows)
    return [r for r, k in zip(masking, keep) if k]
