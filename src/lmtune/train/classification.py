"""task: classification — a label per text (or text pair), on an encoder or a decoder LM.

On top of the shared Session steps: the label set is fixed (data.labels, or discovered from the
training data and sorted) and stored in the run; the model is loaded with a fresh head of that
many outputs; every method trains the head besides its own parameters. Validation accuracy and
macro-F1 are measured before and after training; the summary adds per-class precision/recall/F1
and the confusion matrix, which is also drawn as confusion.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune.config.schema import RunConfig
from lmtune.errors import ConfigError, DataError
from lmtune.train.session import RunResult, Session

CONFUSION_PNG = "confusion.png"


def run(cfg: RunConfig, *, resume: bool = False, console: Any = None) -> RunResult:
    from lmtune.data.classification import apply_labels, label_counts, sort_labels
    from lmtune.models.classifier import label_maps, load_classifier, pad_left_for_last_token
    from lmtune.tokenize.classification import tokenize_examples

    s = Session(cfg, resume=resume, console=console)
    data = s.load_data()
    _print_columns(s)
    d = cfg.data
    labels = list(d.labels) if d.labels else sort_labels(r.label for r in data.train)
    if len(labels) < 2:
        raise DataError(
            f"classification needs at least two labels, but the training data has only {labels}.",
            file=d.path,
            hint="check the label column (data.columns: {label: ...}) or add records of the other classes.",
        )
    paths = _paths_by_name(cfg)
    train, train_rejects = apply_labels(data.train, labels, paths)
    val, val_rejects = apply_labels(data.val, labels, paths)
    rejects = data.rejects + train_rejects + val_rejects
    counts = {"train": label_counts(train, labels), "validation": label_counts(val, labels)}
    _print_labels(s, labels, counts, train_rejects + val_rejects, [r.label for r in train])

    tokenizer = s.load_tokenizer()
    id2label, label2id = label_maps(labels)
    train_set = tokenize_examples(train, tokenizer, max_length=d.max_length, label2id=label2id)
    val_set = tokenize_examples(val, tokenizer, max_length=d.max_length, label2id=label2id)
    info = {
        **data.info,
        "labels": labels,
        "label_counts": counts,
        "train": train_set.stats(),
        "validation": val_set.stats(),
    }
    s.finish_data(info, rejects, trainable=len(train_set.samples))
    s.console.print(
        f"Tokenised {len(train_set.samples)} training and {len(val_set.samples)} validation samples "
        f"(max_length {d.max_length}: {train_set.truncated + val_set.truncated} truncated)"
    )

    from transformers import set_seed

    set_seed(cfg.train.seed)  # the new head starts random: seeded, so a run can be repeated
    model = s.load_model(
        load_classifier,
        num_labels=len(labels),
        id2label=id2label,
        label2id=label2id,
        pad_token_id=tokenizer.pad_token_id,
    )
    pad_left_for_last_token(model, tokenizer)
    model = s.prepare(model, task="classification")
    _require_trainable_head(model, cfg.method.name)
    trainer, report = _trainer(s, model, tokenizer, train_set.samples, val_set.samples, labels)

    has_val = bool(val_set.samples)
    if not has_val:
        s.console.print(
            "[yellow]No validation data: accuracy, macro-F1 and the confusion matrix need data.val_path "
            "(a labelled file) or data.val_size (a share of the training file).[/]"
        )
    before = trainer.evaluate() if has_val and not resume else {}
    output, seconds = s.train(trainer)
    after = trainer.evaluate() if has_val else {}
    final = report.get("last") if has_val else None

    s.save(model, tokenizer, labels=labels, max_length=d.max_length)
    summary = s.base_summary(output, trainer, seconds)
    summary["data"] = {
        "train_samples": len(train_set.samples),
        "val_samples": len(val_set.samples),
        "rejected": len(rejects),
    }
    summary["eval_loss"] = {"before": before.get("eval_loss"), "after": after.get("eval_loss")}
    summary["metrics"] = {
        name: {"before": before.get(f"eval_{name}"), "after": after.get(f"eval_{name}")}
        for name in ("accuracy", "macro_f1")
    }
    summary["classification"] = {"labels": labels, "label_counts": counts}
    if final is not None:
        from lmtune.eval.classification import plot_confusion

        summary["classification"].update(
            per_class=final["per_class"],
            confusion=final["confusion"],
            majority_rate=max(counts["validation"].values()) / max(1, len(val_set.samples)),
        )
        plot_confusion(
            final["confusion"],
            labels,
            s.run.root / CONFUSION_PNG,
            title=f"validation, accuracy {final['accuracy']:.3f}",
        )
    return s.finish(summary, model)


def _trainer(
    s: Session, model: Any, tokenizer: Any, train: list[dict], val: list[dict], labels: list[str]
) -> tuple[Any, dict[str, Any]]:
    """The HF Trainer with our metrics; `report["last"]` holds the latest full evaluation report."""
    from transformers import Trainer

    from lmtune.eval.classification import classification_report
    from lmtune.tokenize.classification import ListDataset, collator
    from lmtune.train.checkpoints import atomic
    from lmtune.train.optim import build_optimizer

    report: dict[str, Any] = {}

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        full = classification_report(prediction.label_ids, logits.argmax(-1), labels)
        report["last"] = full
        return {"accuracy": full["accuracy"], "macro_f1": full["macro_f1"]}

    has_val = bool(val)
    trainer = s.quiet(
        atomic(Trainer)(
            model=model,
            args=s.training_args(has_val=has_val, label_names=["labels"]),
            train_dataset=ListDataset(train),
            eval_dataset=ListDataset(val) if has_val else None,
            data_collator=collator(tokenizer),
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
            callbacks=s.callbacks(),
            optimizers=(build_optimizer(model, s.cfg), None),
        )
    )
    # The heads' forward takes **kwargs, so the Trainer would assume the loss was divided by the
    # global item count and skip its own scaling: no division by train.grad_accum, and a product
    # with the world size under DDP. The classification loss is a per-batch mean: scale it as one.
    trainer.model_accepts_loss_kwargs = False
    return trainer, report


def _require_trainable_head(model: Any, method: str) -> None:
    """Every method must train the new head: frozen at its random start, the labels mean nothing."""
    from lmtune.models.classifier import head_module

    found = head_module(model)
    if found is None or not any(p.requires_grad for p in found[1].parameters()):
        raise ConfigError(
            f"method {method} leaves this model's classification head frozen, so it would predict from "
            "random weights. Use method.name: lora, full or freeze."
        )


def _paths_by_name(cfg: RunConfig) -> dict[str, str]:
    """File name (as in a record's source) -> the path the config gives."""
    from lmtune.data.sources import training_specs

    paths = [spec.path for spec in training_specs(cfg.data)]
    if cfg.data.val_path:
        paths.append(cfg.data.val_path)
    return {Path(p).name: p for p in paths}


def _print_columns(s: Session) -> None:
    """Say which columns were taken as text / label in each file (cheap: files are re-read)."""
    from itertools import islice

    from lmtune.data.classification import detect_columns
    from lmtune.data.readers import iter_raw_records
    from lmtune.data.sources import training_specs

    d = s.cfg.data
    files = [(spec.path, spec.columns) for spec in training_specs(d)]
    if d.val_path:
        files.append((d.val_path, dict(d.columns)))
    for path, columns in files:
        positional = bool(columns) and all(v.isdigit() for v in columns.values())
        raws = list(islice(iter_raw_records(path, header=not positional), 1000))
        if raws:
            mapping = detect_columns(raws, columns, file=path)
            s.console.print(f"Columns of {Path(path).name}: {mapping.describe()}")


def _print_labels(
    s: Session, labels: list[str], counts: dict[str, dict[str, int]], unknown: list[Any], order: list[Any]
) -> None:
    from lmtune.data.classification import imbalance_warning, sorted_warning

    def show(c: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in c.items())

    origin = "data.labels" if s.cfg.data.labels else "discovered, sorted"
    s.console.print(f"Labels ({len(labels)}, {origin}): train {show(counts['train'])}")
    if sum(counts["validation"].values()):
        s.console.print(f"  validation {show(counts['validation'])}")
    if unknown:
        s.console.print(
            f"[yellow]{len(unknown)} records have a label outside the run's labels and were skipped "
            f"(e.g. {unknown[0].message}); see {s.run.rejects}[/]"
        )
    for warning in (
        imbalance_warning(counts["train"]),
        None if s.cfg.data.shuffle else sorted_warning(order),
    ):
        if warning:
            s.console.print(f"[yellow]Warning: {warning}[/]")
