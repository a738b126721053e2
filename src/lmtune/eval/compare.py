"""Target vs baseline on the same records: metric deltas, and the records where they differ most.

A record's comparison key is lexicographic over the per-record scores both models have, most
decisive first: (correct label, exact match, contains, ROUGE-L, BLEU, -loss). The target wins a
record when its key is greater; ties (equal on every score) are counted, not listed.
"""

from __future__ import annotations

from typing import Any

LOWER_IS_BETTER = {"loss", "perplexity", "generation_seconds", "unmapped"}
RECORD_KEYS = ("correct", "exact_match", "contains", "rougeL", "bleu", "loss")


def metric_deltas(target: dict[str, Any], baseline: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{metric: {target, baseline, delta, better}} for every numeric metric both results have."""
    out = {}
    for key, t in target.items():
        b = baseline.get(key)
        if not _number(t) or not _number(b):
            continue
        delta = t - b
        sign = -1 if key in LOWER_IS_BETTER else 1
        better = None if delta == 0 else ("target" if sign * delta > 0 else "baseline")
        out[key] = {"target": t, "baseline": b, "delta": delta, "better": better}
    return out


def record_key(scores: dict[str, Any], keys: list[str]) -> tuple[float, ...]:
    return tuple((-float(scores[k]) if k == "loss" else float(scores[k])) for k in keys)


def compare(target: dict[str, Any], baseline: dict[str, Any], *, top: int = 5) -> dict[str, Any]:
    """Deltas and per-record wins/losses of `target` over `baseline` (evaluate() results, same items)."""
    tp, bp = target["predictions"], baseline["predictions"]
    if len(tp) != len(bp):
        raise ValueError(f"the results cover {len(tp)} and {len(bp)} records: not the same evaluation set")
    diffs = []
    for k, (t, b) in enumerate(zip(tp, bp)):
        keys = [x for x in RECORD_KEYS if _scored(t["scores"].get(x)) and _scored(b["scores"].get(x))]
        if not keys:
            continue
        d = tuple(x - y for x, y in zip(record_key(t["scores"], keys), record_key(b["scores"], keys)))
        diffs.append((d, k, keys))
    wins = sorted((x for x in diffs if x[0] > (0.0,) * len(x[0])), key=lambda x: x[0], reverse=True)
    losses = sorted((x for x in diffs if x[0] < (0.0,) * len(x[0])), key=lambda x: x[0])
    return {
        "metrics": metric_deltas(target.get("metrics", {}), baseline.get("metrics", {})),
        "records": {"wins": len(wins), "losses": len(losses), "ties": len(diffs) - len(wins) - len(losses)},
        "wins": [_entry(d, k, keys) for d, k, keys in wins[:top]],
        "losses": [_entry(d, k, keys) for d, k, keys in losses[:top]],
    }


def _entry(d: tuple[float, ...], index: int, keys: list[str]) -> dict[str, Any]:
    """The record and the first score that decides it (what the report names as the difference)."""
    first = next(i for i, x in enumerate(d) if x != 0)
    key = keys[first]
    return {"index": index, "decided_by": key, "delta": -d[first] if key == "loss" else d[first]}


def _scored(value: Any) -> bool:
    return value is not None and (isinstance(value, bool) or _number(value))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
