"""One model on one evaluation set: generations, per-record scores and corpus metrics.

The result is plain JSON (what eval/<name>.json holds and the report reads):

    {"target": ..., "name": ..., "task": "sft" | "classification",
     "metrics": {"loss", "perplexity", "exact_match", "contains", "bleu", "rouge1", "rouge2", "rougeL",
                 "accuracy", "f1", "tokens_per_second", "generated_tokens", "generation_seconds", ...},
     "classification": {accuracy, macro_f1, per_class, confusion, labels} | absent,
     "predictions": [{"prediction": str, "tokens": int, "scores": {...}}, ...]}   # item order

Only the metrics asked for (or, for "auto", those the data can support) are computed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from lmtune.errors import ConfigError
from lmtune.eval.items import EvalData
from lmtune.infer.generate import GenerationOptions

METRICS = ("loss", "perplexity", "exact_match", "contains", "bleu", "rouge", "accuracy", "f1", "speed")
GENERATED = ("exact_match", "contains", "bleu", "rouge", "accuracy", "f1", "speed")  # need generation


@dataclass
class EvalOptions:
    metrics: list[str] = field(default_factory=lambda: ["auto"])
    generation: GenerationOptions = field(default_factory=lambda: GenerationOptions(seed=0))
    batch_size: int = 8
    max_length: int | None = None  # None: the run directory's data.max_length, else 1024
    train_on: str | None = None  # None: the run directory's data.train_on, else all
    normalize: dict[str, bool] | None = None  # exact_match options (lmtune.eval.metrics.normalize)


def resolve_metrics(requested: list[str], data: EvalData, *, classifier: bool) -> list[str]:
    """The metric list to compute: "auto" picks what the data supports; a metric the data cannot
    support (e.g. accuracy without labels) is a ConfigError naming the reason."""
    unknown = [m for m in requested if m not in (*METRICS, "auto")]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; choose from auto, {', '.join(METRICS)}")
    has_ref = any(i.reference for i in data.items)
    if "auto" in requested:
        if classifier:
            picked = ["loss", "accuracy", "f1"]
        elif data.kind == "classification":
            picked = ["accuracy", "f1", "exact_match", "speed"]
        else:
            picked = ["loss", "perplexity"] if any(i.messages for i in data.items) else []
            if has_ref:
                picked += ["exact_match", "bleu", "rouge"]
            if any(i.contains for i in data.items):
                picked.append("contains")
            picked.append("speed")
        requested = picked + [m for m in requested if m != "auto" and m not in picked]
    if classifier and data.kind != "classification":
        raise ConfigError(
            f"{data.path} holds {data.format} conversations, but the target is a classification run: "
            "evaluate it on labelled records ({text, label} or a csv/tsv with a label column)"
        )
    if classifier and (bad := [m for m in requested if m not in ("loss", "accuracy", "f1")]):
        raise ConfigError(f"a classification run is scored with loss, accuracy and f1, not {bad}")
    if not classifier and data.kind != "classification" and {"accuracy", "f1"} & set(requested):
        raise ConfigError(
            "accuracy and f1 need a fixed label set: evaluate on labelled records ({text, label}) "
            "or use exact_match for free-text answers"
        )
    if not has_ref and (bad := [m for m in requested if m in ("exact_match", "bleu", "rouge")]):
        raise ConfigError(f"{bad} compare with a reference answer, and no record in {data.path} has one")
    return list(dict.fromkeys(requested))


def evaluate(loaded: Any, data: EvalData, options: EvalOptions) -> dict[str, Any]:
    """Score one loaded target (lmtune.run.load.LoadedTarget) on `data`."""
    classifier = (loaded.run or {}).get("task") == "classification"
    metrics = resolve_metrics(options.metrics, data, classifier=classifier)
    result: dict[str, Any] = {"target": loaded.name, "task": "classification" if classifier else "sft"}
    if classifier:
        result.update(_evaluate_classifier(loaded, data, options))
        return result
    predictions: list[dict[str, Any]] = [{"scores": {}} for _ in data.items]
    values: dict[str, Any] = {}
    if {"loss", "perplexity"} & set(metrics):
        values.update(_loss(loaded, data, options, predictions))
    if set(GENERATED) & set(metrics):
        values.update(_generate_and_score(loaded, data, options, metrics, predictions, result))
    result["metrics"] = {k: v for k, v in values.items() if _wanted(k, metrics)}
    result["predictions"] = predictions
    return result


def _wanted(key: str, metrics: list[str]) -> bool:
    group = {
        "perplexity": "perplexity",
        "loss": "loss",
        "loss_records": "loss",
        "loss_tokens": "loss",
        "rouge1": "rouge",
        "rouge2": "rouge",
        "rougeL": "rouge",
        "unmapped": "accuracy",
        "tokens_per_second": "speed",
        "generated_tokens": "speed",
        "generation_seconds": "speed",
    }.get(key, key)
    return group in metrics or (group == "loss" and "perplexity" in metrics)


def _loss(loaded: Any, data: EvalData, options: EvalOptions, predictions: list[dict]) -> dict[str, Any]:
    from lmtune.eval.loss import conversation_nll, corpus_loss

    per_item = conversation_nll(
        loaded.model,
        loaded.tokenizer,
        data.items,
        max_length=options.max_length or 1024,
        train_on=options.train_on or "all",
        batch_size=max(1, options.batch_size // 2),
    )
    for p, x in zip(predictions, per_item):
        if x is not None and x[1]:
            p["scores"]["loss"] = x[0] / x[1]
    return corpus_loss(per_item)


def _generate_and_score(
    loaded: Any,
    data: EvalData,
    options: EvalOptions,
    metrics: list[str],
    predictions: list[dict],
    result: dict[str, Any],
) -> dict[str, Any]:
    from lmtune.eval import metrics as m
    from lmtune.infer.generate import generate_with_counts

    start = time.perf_counter()
    outs = generate_with_counts(
        loaded.model,
        loaded.tokenizer,
        [i.prompt for i in data.items],
        options.generation,
        batch_size=options.batch_size,
    )
    seconds = time.perf_counter() - start
    norm = options.normalize or m.DEFAULT_NORMALIZE
    values: dict[str, Any] = {}
    for item, p, (text, n) in zip(data.items, predictions, outs):
        p["prediction"], p["tokens"] = text, n
        if item.reference is not None:
            if "exact_match" in metrics:
                p["scores"]["exact_match"] = m.exact_match(text, item.reference, **norm)
            if "bleu" in metrics:
                p["scores"]["bleu"] = m.sentence_bleu(text, item.reference)
            if "rouge" in metrics:
                p["scores"]["rougeL"] = m.sentence_rouge(text, item.reference)["rougeL"]
        if "contains" in metrics:
            p["scores"]["contains"] = m.contains(text, item.contains)
    with_ref = [(p["prediction"], i.reference) for p, i in zip(predictions, data.items) if i.reference]
    if "exact_match" in metrics and with_ref:
        values["exact_match"] = _mean(p["scores"].get("exact_match") for p in predictions)
    if "contains" in metrics:
        values["contains"] = _mean(p["scores"].get("contains") for p in predictions)
    if "bleu" in metrics and with_ref:
        values["bleu"] = m.bleu([a for a, _ in with_ref], [b for _, b in with_ref])
    if "rouge" in metrics and with_ref:
        values.update(m.rouge([a for a, _ in with_ref], [b for _, b in with_ref]))
    if {"accuracy", "f1"} & set(metrics) and data.labels:
        labelled = [(k, i.label) for k, i in enumerate(data.items) if i.label is not None]
        mapped = [m.map_to_label(predictions[k]["prediction"], data.labels) for k, _ in labelled]
        for (k, true), label in zip(labelled, mapped):
            predictions[k]["scores"]["label"] = label
            predictions[k]["scores"]["correct"] = label == true
        report = m.label_scores(mapped, [t for _, t in labelled], data.labels)
        result["classification"] = report
        values["accuracy"], values["f1"] = report["accuracy"], report["macro_f1"]
        values["unmapped"] = report.get("unmapped", 0)
    tokens = sum(n for _, n in outs)
    values.update(
        generated_tokens=tokens,
        generation_seconds=round(seconds, 3),
        tokens_per_second=tokens / seconds if seconds > 0 else None,
    )
    return values


def _evaluate_classifier(loaded: Any, data: EvalData, options: EvalOptions) -> dict[str, Any]:
    """A classification run: class probabilities from its head, no generation."""
    import math

    from lmtune.data.classification import LabeledText
    from lmtune.eval.classification import classification_report, classify
    from lmtune.models.classifier import run_labels

    labels = run_labels(loaded.name, loaded.run)
    index = {label: k for k, label in enumerate(labels)}
    unknown = sorted({i.label for i in data.items if i.label is not None and i.label not in index})
    if unknown:
        raise ConfigError(
            f"{data.path} has labels {unknown[:5]} the run was not trained on (its labels: {labels})"
        )
    records = [LabeledText(i.text or "", i.text_pair, i.label, i.source) for i in data.items]
    probs = classify(
        loaded.model,
        loaded.tokenizer,
        records,
        max_length=options.max_length or 1024,
        batch_size=options.batch_size,
    )
    predictions, nll, y_true, y_pred = [], [], [], []
    for item, p in zip(data.items, probs):
        label = labels[int(p.argmax())]
        scores: dict[str, Any] = {"label": label}
        if item.label is not None:
            t = index[item.label]
            scores["correct"] = label == item.label
            scores["loss"] = -math.log(max(float(p[t]), 1e-45))
            nll.append(scores["loss"])
            y_true.append(t)
            y_pred.append(int(p.argmax()))
        predictions.append(
            {"prediction": label, "probabilities": dict(zip(labels, map(float, p))), "scores": scores}
        )
    report = classification_report(y_true, y_pred, labels)
    return {
        "metrics": {
            "loss": sum(nll) / len(nll) if nll else None,
            "accuracy": report["accuracy"],
            "f1": report["macro_f1"],
        },
        "classification": report,
        "predictions": predictions,
    }


def _mean(values: Any) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
