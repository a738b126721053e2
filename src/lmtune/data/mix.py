"""Mix the records of several datasets into one training list, reproducibly.

Two ways, as `data.mix` says:

- concat: the lists one after another. A weight scales a list's record count: the list is used
  round(weight * n) times (half rounded up): whole copies in file order, then a seeded sample (in
  file order) for the fraction. weight 2 repeats every record twice, 0.5 takes a seeded half,
  1.5 takes every record once plus a seeded half.
- interleave: at each step a list is drawn with probability proportional to its weight
  (random.Random(seed)) and its next record is taken. `stop` follows Hugging Face
  `datasets.interleave_datasets`: first_exhausted stops right after the draw that uses up any
  list (that list is used in full, the others partly); all_exhausted keeps drawing, restarting a
  used-up list from its first record, and stops right after the draw that completes the last
  list's first full pass, so every record is used at least once.

Order within the mix only matters for reproducibility: the trainer shuffles each epoch anyway
(`data.shuffle`). The same seed gives the same mix; the counts returned say how many records each
list contributed (repeats included), which the run reports per dataset.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal


def mix_records(
    lists: Sequence[Sequence[Any]],
    weights: Sequence[float],
    *,
    how: Literal["concat", "interleave"] = "concat",
    stop: Literal["first_exhausted", "all_exhausted"] = "first_exhausted",
    seed: int = 42,
) -> tuple[list[Any], list[int]]:
    """The mixed records and how many were taken from each list (repeats counted)."""
    if len(lists) != len(weights):
        raise ValueError(f"{len(lists)} lists but {len(weights)} weights")
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ValueError(f"weights must be >= 0 with at least one > 0, got {list(weights)}")
    if how == "concat":
        return _concat(lists, weights, seed)
    if how == "interleave":
        if stop not in ("first_exhausted", "all_exhausted"):
            raise ValueError(f"unknown stop {stop!r}: use first_exhausted or all_exhausted")
        return _interleave(lists, weights, stop, seed)
    raise ValueError(f"unknown mix {how!r}: use concat or interleave")


def scaled_count(n: int, weight: float) -> int:
    """Records a list of n contributes under concat: weight * n, half rounded up."""
    return int(weight * n + 0.5)


def _concat(
    lists: Sequence[Sequence[Any]], weights: Sequence[float], seed: int
) -> tuple[list[Any], list[int]]:
    rng = random.Random(seed)
    out: list[Any] = []
    used = []
    for records, weight in zip(lists, weights):
        n = len(records)
        total = scaled_count(n, weight) if n else 0
        copies, extra = divmod(total, n) if n else (0, 0)
        for _ in range(copies):
            out.extend(records)
        if extra:
            out.extend(records[i] for i in sorted(rng.sample(range(n), extra)))
        used.append(total)
    return out, used


def _interleave(
    lists: Sequence[Sequence[Any]], weights: Sequence[float], stop: str, seed: int
) -> tuple[list[Any], list[int]]:
    rng = random.Random(seed)
    population = list(range(len(lists)))
    cum = list(itertools.accumulate(weights))

    def draws() -> Iterator[int]:
        while True:
            yield rng.choices(population, cum_weights=cum)[0]

    return interleave_by_draws(lists, draws(), stop, drawable=[i for i, w in enumerate(weights) if w > 0])


def interleave_by_draws(
    lists: Sequence[Sequence[Any]], draws: Iterable[int], stop: str, *, drawable: Sequence[int] | None = None
) -> tuple[list[Any], list[int]]:
    """Interleave given the sequence of drawn list indexes (split out so the stopping rules can be
    checked against `datasets.interleave_datasets` on the very same draws)."""
    drawable = list(range(len(lists))) if drawable is None else list(drawable)
    empty = [i for i in drawable if not lists[i]]
    if empty:
        raise ValueError(f"cannot interleave: lists {empty} are empty")
    taken = [0] * len(lists)
    done = [False] * len(lists)  # used in full at least once
    out: list[Any] = []
    for i in draws:
        out.append(lists[i][taken[i] % len(lists[i])])
        taken[i] += 1
        if taken[i] == len(lists[i]):
            done[i] = True
            if stop == "first_exhausted" or all(done[j] for j in drawable):
                return out, taken
    raise ValueError("the draws ran out before the stopping rule was met")
