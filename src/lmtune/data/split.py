"""Deterministic train/validation/test split.

The same records, sizes and seed always give the same split, on any machine, so a run can be
reproduced and its validation loss compared across runs. Each part keeps the file's order (only
membership is random), which keeps `source` numbers easy to follow; the trainer shuffles anyway.
"""

from __future__ import annotations

import random
from typing import Any, TypeVar

from lmtune.errors import DataError

T = TypeVar("T")


def split_records(
    records: list[T], *, val_size: float | int = 0, test_size: float | int = 0, seed: int = 42
) -> tuple[list[T], list[T], list[T]]:
    """Split into (train, val, test); a float in (0, 1) is a fraction, an int >= 1 a count."""
    n = len(records)
    n_val = _count(val_size, n, "val_size")
    n_test = _count(test_size, n, "test_size")
    if n_val + n_test >= n and (n_val or n_test):
        raise DataError(
            f"val_size={val_size!r} and test_size={test_size!r} take {n_val + n_test} of {n} records, "
            "leaving no training data.",
            hint="lower val_size/test_size (a fraction like 0.1, or a small count), or add more data.",
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    test_idx = sorted(order[:n_test])
    val_idx = sorted(order[n_test : n_test + n_val])
    train_idx = sorted(order[n_test + n_val :])
    return [records[i] for i in train_idx], [records[i] for i in val_idx], [records[i] for i in test_idx]


def _count(size: Any, n: int, name: str) -> int:
    """Turn a fraction or count into a number of records (a non-zero fraction gives at least 1)."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise DataError(
            f"{name} must be a number, got {size!r}.", hint="use a fraction like 0.1 or a count like 200."
        )
    if size == 0:
        return 0
    if isinstance(size, float) and 0 < size < 1:
        return max(1, round(size * n))
    if isinstance(size, int) and size >= 1:
        return size
    raise DataError(
        f"{name}={size!r} is neither a fraction between 0 and 1 nor a whole count >= 1.",
        hint=f"use e.g. {name}: 0.1 (10% of the records) or {name}: 200 (200 records).",
    )
