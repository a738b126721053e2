"""Deterministic train/val/test split."""

from __future__ import annotations

import pytest

from lmtune.data.split import split_records
from lmtune.errors import DataError

RECORDS = list(range(100))


def test_no_split_returns_everything():
    train, val, test = split_records(RECORDS)
    assert (train, val, test) == (RECORDS, [], [])
    assert train is not RECORDS


def test_fractions_and_counts_partition_the_records():
    train, val, test = split_records(RECORDS, val_size=0.1, test_size=5)
    assert (len(train), len(val), len(test)) == (85, 10, 5)
    assert sorted(train + val + test) == RECORDS
    assert train == sorted(train) and val == sorted(val)  # file order kept inside each part


def test_deterministic_and_seeded():
    a = split_records(RECORDS, val_size=0.2, seed=1)
    assert a == split_records(RECORDS, val_size=0.2, seed=1)
    assert a[1] != split_records(RECORDS, val_size=0.2, seed=2)[1]
    assert a[1] != list(range(80, 100))  # shuffled, not the tail of the file


def test_small_fraction_gives_at_least_one():
    train, val, _ = split_records(list(range(5)), val_size=0.01)
    assert (len(train), len(val)) == (4, 1)


@pytest.mark.parametrize(
    ("val", "test"),
    [(0.5, 0.5), (100, 0), (60, 40), (0.9, 10)],
)
def test_no_training_data_left(val, test):
    with pytest.raises(DataError, match="no training data"):
        split_records(RECORDS, val_size=val, test_size=test)


@pytest.mark.parametrize("size", [-1, 1.0, 1.5, -0.1, True, "0.1", None])
def test_bad_sizes(size):
    with pytest.raises(DataError, match="val_size"):
        split_records(RECORDS, val_size=size)
