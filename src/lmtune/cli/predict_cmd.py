"""`lmtune predict RUN --data FILE`: label every record of a file with a classification run.

Writes one JSON line per record ({source, text, text_pair?, label, probabilities, true_label?}),
in file order, by default to RUN/predictions/<file stem>.jsonl. Labels in the file are optional;
where they are present the accuracy and macro-F1 are printed too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from lmtune.errors import ConfigError


@dataclass
class Predictions:
    out: Path
    rows: list[dict[str, Any]]
    metrics: dict[str, Any] | None = None  # classification_report over the records with a known label
    rejects: list[Any] = field(default_factory=list)
    unknown_labels: int = 0  # records whose true label is not one of the run's labels


def predict(
    run: str = typer.Argument(..., help="A classification run directory (from lmtune train)."),
    data: Path = typer.Option(..., "--data", "-d", help="File to label: csv, tsv, jsonl, json or parquet."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output .jsonl; default RUN/predictions/<file stem>.jsonl."
    ),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, help="Records per forward pass."),
    column: list[str] = typer.Option(
        [],
        "--column",
        "-c",
        help="Map a field to the file's column, e.g. text=review or label=stars (repeat). In a file "
        "without a header row, give positions: text=1.",
    ),
) -> None:
    """Predict a label, with its probabilities, for every record of a file."""
    result = predict_file(run, data, out=out, batch_size=batch_size, columns=_parse_columns(column))
    typer.echo(f"Wrote {len(result.rows)} predictions to {result.out}")
    if result.rejects:
        first = result.rejects[0]
        typer.echo(f"{len(result.rejects)} records skipped (e.g. record {first.record}: {first.message})")
    if result.metrics is not None:
        m = result.metrics
        typer.echo(
            f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} on {m['count']} labelled records"
        )
    if result.unknown_labels:
        typer.echo(f"{result.unknown_labels} records have a true label the run does not know (not scored)")


def predict_file(
    run: str | Path,
    data: str | Path,
    *,
    out: str | Path | None = None,
    batch_size: int = 32,
    columns: dict[str, str] | None = None,
) -> Predictions:
    """Load the run, label the file, write the predictions; returns them with the metrics."""
    from lmtune.data.classification import load_examples
    from lmtune.eval.classification import classification_report, classify
    from lmtune.models.classifier import run_labels
    from lmtune.run.layout import is_run_dir, read_marker
    from lmtune.run.load import load_target

    run_dir = Path(run)
    if not is_run_dir(run_dir):
        raise ConfigError(
            f"{run_dir} is not a run directory (no lmtune_run.json). Pass the folder lmtune train wrote."
        )
    marker = read_marker(run_dir)
    if marker.get("task") != "classification":
        raise ConfigError(
            f"{run_dir} is a task: {marker.get('task', 'sft')} run; lmtune predict needs a classification "
            f"run. Use: lmtune generate {run_dir} --prompt ..."
        )
    labels = run_labels(run_dir, marker)
    loaded = load_examples(data, columns=columns, require_label=False)
    target = load_target(str(run_dir), quiet=True)
    probs = classify(
        target.model,
        target.tokenizer,
        loaded.records,
        max_length=int(marker.get("max_length") or 512),
        batch_size=batch_size,
    )
    rows = []
    for record, p in zip(loaded.records, probs, strict=True):
        row: dict[str, Any] = {"source": record.source, "text": record.text}
        if record.text_pair is not None:
            row["text_pair"] = record.text_pair
        row["label"] = labels[int(p.argmax())]
        row["probabilities"] = {label: float(x) for label, x in zip(labels, p, strict=True)}
        if record.label is not None:
            row["true_label"] = record.label
        rows.append(row)

    path = Path(out) if out is not None else run_dir / "predictions" / f"{Path(data).stem}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    index = {label: i for i, label in enumerate(labels)}
    scored = [(index[r["true_label"]], index[r["label"]]) for r in rows if r.get("true_label") in index]
    labelled = sum("true_label" in r for r in rows)
    metrics = None
    if scored:
        y_true, y_pred = zip(*scored, strict=True)
        metrics = classification_report(list(y_true), list(y_pred), labels)
    return Predictions(path, rows, metrics, list(loaded.rejects), labelled - len(scored))


def _parse_columns(items: list[str]) -> dict[str, str] | None:
    columns = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"--column '{item}' should be FIELD=COLUMN, e.g. --column text=review.")
        columns[key.strip()] = value.strip()
    return columns or None
