"""Classification metrics against values worked out by hand, and the confusion picture."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmtune.eval.classification import (
    classification_report,
    confusion_matrix,
    majority_rate,
    plot_confusion,
    softmax,
)

LABELS = ["cat", "dog", "fox"]
# true:  cat cat cat dog dog fox fox fox fox
# pred:  cat cat dog dog cat fox fox cat dog
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 0, 2, 2, 0, 1]


def test_confusion_counts_rows_true_columns_predicted():
    assert confusion_matrix(Y_TRUE, Y_PRED, 3).tolist() == [[2, 1, 0], [1, 1, 0], [1, 1, 2]]


def test_report_matches_hand_computation():
    r = classification_report(Y_TRUE, Y_PRED, LABELS)
    assert r["accuracy"] == pytest.approx(5 / 9)
    # cat: tp 2, predicted 4, support 3; dog: tp 1, predicted 3, support 2; fox: tp 2, predicted 2, support 4
    expected = {
        "cat": (2 / 4, 2 / 3),
        "dog": (1 / 3, 1 / 2),
        "fox": (2 / 2, 2 / 4),
    }
    f1s = []
    for label, (p, rec) in expected.items():
        got = r["per_class"][label]
        f1 = 2 * p * rec / (p + rec)
        f1s.append(f1)
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, rec, f1))
    assert [r["per_class"][x]["support"] for x in LABELS] == [3, 2, 4]
    assert r["macro_f1"] == pytest.approx(sum(f1s) / 3)
    assert r["count"] == 9


def test_class_never_predicted_has_zero_precision_not_a_crash():
    r = classification_report([0, 1, 1, 2], [0, 0, 0, 2], LABELS)
    dog = r["per_class"]["dog"]
    assert (dog["precision"], dog["recall"], dog["f1"], dog["predicted"]) == (0.0, 0.0, 0.0, 0)
    # cat: p 1/3, r 1 -> f1 0.5; fox: 1, 1 -> 1; dog 0: macro over the three present classes
    assert r["macro_f1"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert not any(math.isnan(v) for m in r["per_class"].values() for v in m.values())


def test_class_absent_everywhere_is_left_out_of_macro_f1():
    r = classification_report([0, 1], [0, 1], LABELS)
    assert r["macro_f1"] == 1.0 and r["per_class"]["fox"]["support"] == 0


def test_majority_rate_and_softmax():
    assert majority_rate([1, 1, 0, 1]) == 0.75
    p = softmax([[0.0, math.log(3.0)], [5.0, 5.0]])
    assert np.allclose(p, [[0.25, 0.75], [0.5, 0.5]])
    assert np.isfinite(softmax([[1000.0, 0.0]])).all()


def test_confusion_png(tmp_path):
    path = tmp_path / "confusion.png"
    plot_confusion(confusion_matrix(Y_TRUE, Y_PRED, 3).tolist(), LABELS, path, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 2000
