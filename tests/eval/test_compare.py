"""Target vs baseline: metric deltas and per-record wins/losses, on results written out by hand."""

from __future__ import annotations

from typing import Any

import pytest

from lmtune.eval.compare import compare, metric_deltas


def result(metrics: dict[str, Any], scores: list[dict[str, Any]]) -> dict[str, Any]:
    """An evaluate()-shaped result: corpus metrics and one {"scores": ...} prediction per record."""
    return {"metrics": metrics, "predictions": [{"prediction": "-", "scores": s} for s in scores]}


# ------------------------------------------------------------------------------------------ metric deltas


def test_metric_deltas_sign_and_better_side():
    target = {
        "loss": 1.5,
        "perplexity": 4.0,
        "exact_match": 0.5,
        "bleu": 20.0,
        "rougeL": 0.4,
        "generated_tokens": 100,
        "flag": True,  # bools are not metrics to subtract
        "only_in_target": 1.0,
        "tokens_per_second": None,
    }
    baseline = {
        "loss": 2.0,
        "perplexity": 3.0,
        "exact_match": 0.25,
        "bleu": 30.0,
        "rougeL": 0.4,
        "generated_tokens": 90,
        "flag": False,
        "tokens_per_second": 5.0,
        "only_in_baseline": 2.0,
    }
    assert metric_deltas(target, baseline) == {
        # loss/perplexity: lower is better, so a negative delta is the target's win
        "loss": {"target": 1.5, "baseline": 2.0, "delta": -0.5, "better": "target"},
        "perplexity": {"target": 4.0, "baseline": 3.0, "delta": 1.0, "better": "baseline"},
        "exact_match": {"target": 0.5, "baseline": 0.25, "delta": 0.25, "better": "target"},
        "bleu": {"target": 20.0, "baseline": 30.0, "delta": -10.0, "better": "baseline"},
        "rougeL": {"target": 0.4, "baseline": 0.4, "delta": 0.0, "better": None},
        "generated_tokens": {"target": 100, "baseline": 90, "delta": 10, "better": "target"},
    }


# ------------------------------------------------------------------------------------------ compare

# Each record: (target scores, baseline scores) and, in the comment, the difference of the
# comparison keys both have, (target - baseline) with loss negated so that bigger is always better.
RECORDS = [
    ({"exact_match": True, "rougeL": 0.5}, {"exact_match": False, "rougeL": 0.875}),  # (1, -0.375): win
    ({"exact_match": False, "rougeL": 0.75}, {"exact_match": False, "rougeL": 0.5}),  # (0, 0.25): win
    ({"exact_match": False, "rougeL": 0.25}, {"exact_match": True, "rougeL": 0.25}),  # (-1, 0): loss
    ({"exact_match": True, "rougeL": 1.0}, {"exact_match": True, "rougeL": 1.0}),  # (0, 0): tie
    ({"loss": 1.0}, {"loss": 1.5}),  # -1.0 - -1.5 = (0.5,): win (lower loss)
    ({"loss": 2.5}, {"loss": 1.0}),  # -2.5 - -1.0 = (-1.5,): loss
    ({"exact_match": True}, {"rougeL": 0.25}),  # no key in common: skipped, not even a tie
    ({"contains": None, "bleu": 10.0}, {"contains": True, "bleu": 10.0}),  # contains unscored: (0,): tie
]


@pytest.fixture
def pair() -> tuple[dict[str, Any], dict[str, Any]]:
    target = result({"loss": 1.5, "exact_match": 0.5}, [t for t, _ in RECORDS])
    baseline = result({"loss": 2.0, "exact_match": 0.5}, [b for _, b in RECORDS])
    return target, baseline


def test_compare_counts_wins_losses_ties(pair):
    out = compare(*pair)
    assert out["records"] == {"wins": 3, "losses": 2, "ties": 2}  # record 7 (no common key) is skipped
    assert out["metrics"] == metric_deltas(pair[0]["metrics"], pair[1]["metrics"])


def test_compare_lists_biggest_first_with_the_deciding_score(pair):
    out = compare(*pair)
    # wins by key, descending: (1, -0.375) > (0.5,) > (0, 0.25)
    assert out["wins"] == [
        {"index": 0, "decided_by": "exact_match", "delta": 1.0},
        # loss is reported in its own units, target - baseline (1.0 - 1.5), as in metric_deltas
        {"index": 4, "decided_by": "loss", "delta": -0.5},
        {"index": 1, "decided_by": "rougeL", "delta": 0.25},
    ]
    # losses by key, ascending: (-1.5,) < (-1, 0)
    assert out["losses"] == [
        {"index": 5, "decided_by": "loss", "delta": 1.5},  # 2.5 - 1.0: the target's loss is higher
        {"index": 2, "decided_by": "exact_match", "delta": -1.0},
    ]


def test_compare_top_truncates_lists_not_counts(pair):
    out = compare(*pair, top=1)
    assert [e["index"] for e in out["wins"]] == [0]
    assert [e["index"] for e in out["losses"]] == [5]
    assert out["records"] == {"wins": 3, "losses": 2, "ties": 2}


def scores(correct: bool, exact: bool, contains: bool, rouge: float, bleu: float, loss: float) -> dict:
    keys = ("correct", "exact_match", "contains", "rougeL", "bleu", "loss")
    return dict(zip(keys, (correct, exact, contains, rouge, bleu, loss)))


def test_record_keys_are_ranked_correct_exact_contains_rouge_bleu_loss():
    base = scores(False, False, False, 0.5, 20.0, 1.0)
    target = [
        scores(False, False, False, 0.5, 20.0, 0.75),  # only a lower loss: decided by loss, +last
        scores(True, False, False, 0.0, 0.0, 9.0),  # correct, though worse on everything else: first
        scores(False, False, True, 0.5, 20.0, 1.0),  # contains: second
        scores(False, False, False, 0.875, 5.0, 1.0),  # rougeL +0.375 outranks its bleu -15: third
        scores(False, False, False, 0.5, 60.0, 1.0),  # bleu +40, still after any rougeL gain: fourth
        scores(False, True, False, 0.5, 20.0, 1.0),  # exact_match: between correct and contains
    ]
    out = compare(result({}, target), result({}, [base] * len(target)), top=6)
    assert out["records"] == {"wins": 6, "losses": 0, "ties": 0}
    assert [(e["index"], e["decided_by"], e["delta"]) for e in out["wins"]] == [
        (1, "correct", 1.0),
        (5, "exact_match", 1.0),
        (2, "contains", 1.0),
        (3, "rougeL", 0.375),
        (4, "bleu", 40.0),
        (0, "loss", -0.25),  # 0.75 - 1.0: lower loss is the win
    ]
    # the same records the other way round are losses, in the same order
    swapped = compare(result({}, [base] * len(target)), result({}, target), top=6)
    assert [(e["index"], e["decided_by"]) for e in swapped["losses"]] == [
        (e["index"], e["decided_by"]) for e in out["wins"]
    ]
    assert swapped["losses"][-1]["delta"] == 0.25  # baseline's loss 1.0 - target's 0.75


def test_compare_needs_the_same_number_of_records():
    with pytest.raises(ValueError, match="3 and 2 records"):
        compare(result({}, [{"bleu": 1.0}] * 3), result({}, [{"bleu": 1.0}] * 2))


def test_compare_without_common_scores_or_metrics():
    out = compare({"predictions": [{"scores": {"bleu": 1.0}}]}, {"predictions": [{"scores": {"loss": 1.0}}]})
    assert out == {"metrics": {}, "records": {"wins": 0, "losses": 0, "ties": 0}, "wins": [], "losses": []}
