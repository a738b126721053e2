"""The run's human-readable outputs: loss plot, summary.md/summary.json, and the printed report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune.run.layout import RunDir, write_json


def plot_losses(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    draw_losses(ax, history)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def draw_losses(ax: Any, history: list[dict[str, Any]], title: str | None = None) -> None:
    """Train and validation loss by optimizer step (metrics.jsonl rows) on a matplotlib axis."""
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if train:
        ax.plot(*zip(*train), label="train loss", marker="." if len(train) < 30 else None)
    if val:
        ax.plot(*zip(*val), label="validation loss", marker="o")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def write_summary(run: RunDir, s: dict[str, Any], console: Any) -> None:
    write_json(run.summary_json, s)
    p = s["parameters"]
    lines = [
        f"# Run {run.root.name}",
        "",
        "| | |",
        "|---|---|",
        f"| task | {s.get('task', 'sft')} |",
        f"| model | {s['model']} |",
        f"| method | {s['method']} |",
        f"| trainable parameters | {p['trainable']:,} of {p['total']:,} ({p['trainable_percent']}%) |",
    ]
    if "data" in s:
        d = s["data"]
        lines.append(
            f"| samples (train / validation / rejected) | {d['train_samples']} / {d['val_samples']} / {d['rejected']} |"
        )
    lines += [
        f"| optimizer steps | {s['steps']} |",
        f"| tokens seen (non-padding) | {s['tokens_seen']:,} |",
        f"| training time | {s['train_seconds']} s (whole run {s['total_seconds']} s) |",
        f"| train loss (first log / last log) | {_fmt(s['train_loss']['first'])} / {_fmt(s['train_loss']['last'])} |",
    ]
    if "eval_loss" in s:
        el = s["eval_loss"]
        lines.append(f"| validation loss (before / after) | {_fmt(el['before'])} / {_fmt(el['after'])} |")
    for name, m in s.get("metrics", {}).items():  # task metrics: {name: {before, after}}
        lines.append(f"| {name} (before / after) | {_fmt(m.get('before'))} / {_fmt(m.get('after'))} |")
    lines += _classification_lines(s.get("classification") or {})
    lines += _eval_lines(s.get("eval"))
    lines += [
        "",
        "Files: config.yaml, data_stats.json, rejects.jsonl, metrics.jsonl, loss.png, "
        "the trained weights and the tokenizer (with its chat template).",
        "",
    ]
    run.summary_md.write_text("\n".join(lines), encoding="utf-8")
    _print(s, console)


def _classification_lines(c: dict[str, Any]) -> list[str]:
    """task: classification: per-class scores and the confusion matrix (rows true, columns predicted)."""
    if not c.get("per_class"):
        return []
    labels = c["labels"]
    lines = [
        "",
        "## Validation by class",
        "",
        "| label | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for label, m in c["per_class"].items():
        lines.append(
            f"| {_cell(label)} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |"
        )
    lines += ["", "Confusion matrix (rows: true label, columns: predicted; also confusion.png):", ""]
    lines.append("| true \\ predicted | " + " | ".join(_cell(x) for x in labels) + " |")
    lines.append("|---" * (len(labels) + 1) + "|")
    for label, row in zip(labels, c["confusion"]):
        lines.append(f"| {_cell(label)} | " + " | ".join(str(n) for n in row) + " |")
    return lines


# The training summary's short list; the full set is in RUN/eval/<name>.json and its report.
SHOWN_METRICS = ("loss", "exact_match", "contains", "bleu", "rougeL", "accuracy", "f1")


def _answer_rows(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(prompt, base answer, tuned answer) per evaluated record."""
    before = doc.get("baseline")
    rows = []
    for k, item in enumerate(doc["items"]):
        base = before["predictions"][k].get("prediction", "-") if before else "-"
        rows.append(
            (item["prompt"][-1]["content"], base, doc["target"]["predictions"][k].get("prediction", "-"))
        )
    return rows


def _eval_lines(doc: dict[str, Any] | None) -> list[str]:
    """eval.path before and after training: the metrics, then every prompt's two answers."""
    if not doc:
        return []
    before = doc.get("baseline")
    lines = ["", "## Eval prompts (full report: eval/)", "", "| metric | before | after |", "|---|---|---|"]
    for key, value in doc["target"]["metrics"].items():
        if key in SHOWN_METRICS:
            b = before["metrics"].get(key) if before else None
            lines.append(f"| {key} | {_fmt(b)} | {_fmt(value)} |")
    lines += ["", "| prompt | base | tuned |", "|---|---|---|"]
    lines += [f"| {_cell(p)} | {_cell(b)} | {_cell(t)} |" for p, b, t in _answer_rows(doc)]
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _print(s: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    doc = s.get("eval")
    if doc:
        before = doc.get("baseline")
        table = Table(title="Eval prompts: base vs tuned", show_lines=True)
        table.add_column("prompt", max_width=30)
        table.add_column("base model", max_width=45)
        table.add_column("tuned model", max_width=45)
        for row in _answer_rows(doc):
            table.add_row(*row)
        console.print(table)
        for key, value in doc["target"]["metrics"].items():
            if key in SHOWN_METRICS:
                b = before["metrics"].get(key) if before else None
                console.print(f"[bold]{key}[/]: {_fmt(b)} before -> {_fmt(value)} after")
    tl, el = s["train_loss"], s.get("eval_loss") or {}
    extra = "".join(
        f", {name} {_fmt(m.get('before'))} -> {_fmt(m.get('after'))}"
        for name, m in s.get("metrics", {}).items()
    )
    console.print(
        f"[bold green]Done[/] in {s['total_seconds']} s: train loss {_fmt(tl['first'])} -> {_fmt(tl['last'])}"
        + (
            f", validation loss {_fmt(el['before'])} -> {_fmt(el['after'])}"
            if el.get("after") is not None
            else ""
        )
        + extra
        + f". Run directory: {s['run_dir']}"
    )
