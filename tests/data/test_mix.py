"""Mixing several datasets: concat with count-scaling weights, interleave with sampling weights.

The interleave stopping rules are checked against Hugging Face `datasets.interleave_datasets` on
the very same sequence of draws; the draws themselves are checked for their proportions.
"""

from __future__ import annotations

from collections import Counter

import pytest

from lmtune.data.mix import interleave_by_draws, mix_records

A = [f"a{i}" for i in range(10)]
B = [f"b{i}" for i in range(4)]
C = [f"c{i}" for i in range(7)]


def test_concat_weight_one_is_plain_concatenation():
    records, used = mix_records([A, B, C], [1, 1, 1], how="concat", seed=0)
    assert records == A + B + C
    assert used == [10, 4, 7]


def test_concat_whole_weights_repeat_the_file_in_order():
    records, used = mix_records([A, B], [2, 3], how="concat", seed=0)
    assert records == A + A + B + B + B
    assert used == [20, 12]


@pytest.mark.parametrize(
    ("weight", "n", "expected"),
    [(0.5, 10, 5), (0.5, 7, 4), (1.5, 4, 6), (0.25, 2, 1), (0.1, 4, 0), (2.6, 5, 13)],
)
def test_concat_fraction_is_a_seeded_subset_in_file_order(weight, n, expected):
    items = [f"x{i}" for i in range(n)]
    records, used = mix_records([items], [weight], how="concat", seed=3)
    assert used == [expected] and len(records) == expected  # weight * n, half rounded up
    copies, extra = divmod(expected, n)
    assert records[: copies * n] == items * copies  # whole copies first, in file order
    tail = records[copies * n :]
    assert len(set(tail)) == extra and tail == sorted(tail, key=items.index)  # distinct, in file order


def test_concat_fraction_depends_on_the_seed_only():
    first = mix_records([A], [0.5], how="concat", seed=1)[0]
    assert first == mix_records([A], [0.5], how="concat", seed=1)[0]
    others = {tuple(mix_records([A], [0.5], how="concat", seed=s)[0]) for s in range(2, 12)}
    assert len(others | {tuple(first)}) > 1


def _hf_draws(lengths, probabilities, seed, stop):
    """The source of every row `datasets.interleave_datasets` produces."""
    from datasets import Dataset, interleave_datasets

    parts = [Dataset.from_dict({"src": [k] * n, "i": list(range(n))}) for k, n in enumerate(lengths)]
    mixed = interleave_datasets(parts, probabilities=probabilities, seed=seed, stopping_strategy=stop)
    return list(mixed["src"]), list(zip(mixed["src"], mixed["i"]))


@pytest.mark.parametrize("stop", ["first_exhausted", "all_exhausted"])
@pytest.mark.parametrize("seed", [0, 7])
def test_interleave_stops_where_hugging_face_datasets_stops(stop, seed):
    lengths, probs = [10, 4, 7], [0.5, 0.2, 0.3]
    srcs, rows = _hf_draws(lengths, probs, seed, stop)
    lists = [[(k, i) for i in range(n)] for k, n in enumerate(lengths)]
    # the same draws, then more that must never be used: the stopping rule has to cut exactly there
    records, used = interleave_by_draws(lists, iter(srcs + [0] * 100), stop)
    assert records == rows
    assert used == [Counter(srcs)[k] for k in range(3)]


def test_interleave_first_exhausted_uses_one_list_in_full():
    records, used = mix_records([A, B, C], [1, 1, 1], how="interleave", stop="first_exhausted", seed=5)
    full = [k for k, (n, lst) in enumerate(zip(used, [A, B, C])) if n == len(lst)]
    assert len(full) == 1 and records[-1] == [A, B, C][full[0]][-1]
    for lst, n in zip([A, B, C], used):
        assert [r for r in records if r in lst] == lst[:n]  # each list's records in file order


def test_interleave_all_exhausted_uses_every_record_restarting_used_up_lists():
    records, used = mix_records([A, B, C], [1, 1, 1], how="interleave", stop="all_exhausted", seed=5)
    for lst, n in zip([A, B, C], used):
        assert n >= len(lst)
        assert [r for r in records if r in lst] == [lst[i % len(lst)] for i in range(n)]
    last = next(lst for lst in (A, B, C) if records[-1] in lst)
    assert used[[A, B, C].index(last)] == len(last)  # the final draw completed the last first pass


def test_interleave_is_deterministic_per_seed():
    one = mix_records([A, B, C], [1, 2, 3], how="interleave", seed=11)
    assert one == mix_records([A, B, C], [1, 2, 3], how="interleave", seed=11)
    assert any(mix_records([A, B, C], [1, 2, 3], how="interleave", seed=s) != one for s in range(12, 16))


@pytest.mark.parametrize("seed", [0, 1])
def test_interleave_proportions_follow_the_weights(seed):
    big = [list(range(6000)), list(range(6000)), list(range(6000))]
    _, used = mix_records(big, [3, 1, 2], how="interleave", stop="first_exhausted", seed=seed)
    assert used[0] == 6000  # the heaviest list runs out first
    total = sum(used)
    for n, share in zip(used, (3 / 6, 1 / 6, 2 / 6)):
        assert abs(n / total - share) < 0.02


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="weights"):
        mix_records([A, B], [1], seed=0)
    with pytest.raises(ValueError, match="at least one > 0"):
        mix_records([A, B], [0, 0], seed=0)
    with pytest.raises(ValueError, match="unknown mix"):
        mix_records([A], [1], how="zip", seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        mix_records([A, []], [1, 1], how="interleave", seed=0)
