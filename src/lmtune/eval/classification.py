"""Classification metrics in plain numpy: accuracy, per-class precision/recall/F1, macro-F1 and the
confusion matrix, plus its picture; and `classify`, a classification run's class probabilities
(what `lmtune predict` and `lmtune eval` score).

Definitions follow scikit-learn's defaults (not a dependency here): a ratio whose denominator is
zero (precision of a class never predicted, recall of a class absent from the data) is 0, and
macro-F1 averages the classes that occur in the true or the predicted labels, so a label that the
validation data happens not to contain does not pull the average down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def confusion_matrix(y_true: Any, y_pred: Any, num_labels: int) -> np.ndarray:
    """counts[i, j]: records of true label i predicted as j (rows = true, columns = predicted)."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.shape} entries but y_pred has {p.shape}")
    counts = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(counts, (t, p), 1)
    return counts


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(len(num), dtype=np.float64), where=den > 0)


def classification_report(y_true: Any, y_pred: Any, labels: list[str]) -> dict[str, Any]:
    """Everything the summary shows, from label ids: accuracy, macro_f1, per_class, confusion."""
    cm = confusion_matrix(y_true, y_pred, len(labels))
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = (support + predicted) > 0
    total = int(cm.sum())
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "predicted": int(predicted[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion": cm.tolist(),
        "labels": list(labels),
        "count": total,
    }


def majority_rate(y_true: Any) -> float:
    """Accuracy of always answering the most frequent true label (the baseline to beat)."""
    t = np.asarray(y_true, dtype=np.int64)
    return float(np.bincount(t).max() / len(t)) if len(t) else 0.0


def softmax(logits: Any) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def classify(model: Any, tokenizer: Any, records: list[Any], *, max_length: int, batch_size: int = 32) -> Any:
    """Class probabilities (records x labels, numpy) in record order.

    Records are batched by length, so little of each batch is padding; the order is restored after.
    """
    import torch

    from lmtune.models.classifier import pad_left_for_last_token
    from lmtune.tokenize.classification import collator, tokenize_examples

    pad_left_for_last_token(model, tokenizer)
    samples = tokenize_examples(records, tokenizer, max_length=max_length).samples
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]["input_ids"]))
    pad = collator(tokenizer)
    model.eval()
    device = next(model.parameters()).device
    num_labels = model.config.num_labels
    out = np.zeros((len(samples), num_labels), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in pad([samples[i] for i in idx]).items()}
            logits = model(**batch).logits.float().cpu().numpy()
            out[idx] = softmax(logits)
    return out


def plot_confusion(confusion: list[list[int]], labels: list[str], path: Path, *, title: str = "") -> None:
    """The confusion matrix as a PNG: counts in each cell, shaded by the row's share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    n = len(labels)
    size = min(12.0, 2.5 + 0.6 * n)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=100)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(
        range(n),
        labels=[_short(x) for x in labels],
        rotation=45 if n > 4 else 0,
        ha="right" if n > 4 else "center",
    )
    ax.set_yticks(range(n), labels=[_short(x) for x in labels])
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    if title:
        ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    color="white" if share[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _short(label: str, width: int = 16) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"
