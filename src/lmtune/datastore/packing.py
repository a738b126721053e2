"""Packing for a memory-mapped store: the plan from the lengths array, the rows built on demand.

`lmtune.tokenize.packing.pack_samples` concatenates every sample into Python lists up front, which
is what a set larger than memory cannot afford. Here only the plan is computed (best-fit decreasing
on the stored lengths, the same bins as pack_samples) and kept as two int arrays:

    members   sample indices, row after row      [7, 2, 9, 4, 0, ...]
    offsets   where each row starts in members   [0, 3, 5, ...]     row r = members[offsets[r]:offsets[r+1]]

cached beside the store as packed-<width>-<hash of the lengths>.npz (a training split and the whole
store pack differently; written to a temporary name, then renamed). A row's tokens are read from the
Arrow files only when the DataLoader asks for it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lmtune.tokenize.masking import IGNORE
from lmtune.tokenize.packing import best_fit_decreasing


def packing_plan(
    lengths: np.ndarray, width: int, *, cache: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(members, offsets) of the packed rows; read from `cache` (a store folder) when there."""
    lengths = np.ascontiguousarray(lengths, dtype=np.int32)
    tag = hashlib.sha256(lengths.tobytes()).hexdigest()[:16]
    path = cache / f"packed-{width}-{tag}.npz" if cache is not None else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return z["members"], z["offsets"]
    bins = best_fit_decreasing(np.asarray(lengths).tolist(), width)
    members = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=sum(len(b) for b in bins))
    offsets = np.zeros(len(bins) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in bins], out=offsets[1:])
    del bins
    if path is not None:
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, members=members, offsets=offsets)
            os.replace(tmp, path)
        except OSError:
            pass  # an unwritable cache only means the plan is computed again next time
    return members, offsets


class StorePackedDataset:
    """Map-style dataset of packed rows over store samples (lmtune.datastore.views.StoreSamples);
    row i equals pack_samples(samples, width)[i] (same bins, same order, same position ids and labels)."""

    def __init__(self, samples: Any, width: int, *, cache: Path | None = None):
        self.samples = samples
        self.width = width
        self.lengths = samples.lengths
        self.members, self.offsets = packing_plan(self.lengths, width, cache=cache)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, r: int) -> dict[str, list[int]]:
        idx = self.members[self.offsets[r] : self.offsets[r + 1]].tolist()
        rows = self.samples.fetch(idx)  # one read of the row's samples
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for sample_ids, sample_labels in zip(rows["input_ids"], rows["labels"]):
            ids += sample_ids
            labels += [IGNORE, *sample_labels[1:]]
            positions += range(len(sample_ids))
        return {"input_ids": ids, "labels": labels, "position_ids": positions}

    def stats(self) -> dict[str, Any]:
        """The same fields as lmtune.tokenize.packing.packing_stats, from the lengths alone."""
        rows = len(self)
        real = int(np.asarray(self.lengths).sum())
        return {"rows": rows, "row_width": self.width, "fill": round(real / max(1, rows * self.width), 4)}
