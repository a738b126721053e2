"""`lmtune data inspect|convert|split`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(no_args_is_help=True)

FORMAT_HELP = "Force a format: openai, sharegpt, alpaca, dolly, prompt_completion (default: detect)."
COLUMNS_HELP = "Map a field name: canonical=yours, e.g. --column instruction=question (repeatable)."


def _columns(items: list[str]) -> dict[str, str] | None:
    from lmtune.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"--column '{item}' must look like canonical=yours, e.g. output=answer.")
        out[key] = value
    return out or None


def _load(file: Path, fmt: str, columns: list[str], on_error: str = "skip"):
    from lmtune.data.load import load_conversations

    return load_conversations(file, format=fmt, columns=_columns(columns), on_error=on_error)


@app.command("inspect")
def inspect(
    file: Path = typer.Argument(..., help="Data file (json, jsonl, csv, tsv, parquet)."),
    model: str = typer.Option(
        "smollm2-135m-instruct", help="Model whose tokenizer and chat template to use."
    ),
    fmt: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    column: list[str] = typer.Option([], "--column", help=COLUMNS_HELP),
    template: str | None = typer.Option(None, help="Fallback chat template (chatml, alpaca)."),
    max_length: int = typer.Option(1024, help="Truncation length, as data.max_length."),
    train_on: str = typer.Option("all", help="all, last or all_tokens, as data.train_on."),
    example: int = typer.Option(1, help="Which usable record to render (1-based)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output with token ids and labels."),
    records: int = typer.Option(3, help="With --json: how many records to include token ids/labels for."),
    system_merge: str = typer.Option(
        "auto", help="auto or never, as data.system_merge (templates without a system role)."
    ),
) -> None:
    """Detected format, counts, rejects by reason, token lengths, and one example with its trained
    tokens highlighted: exactly what the trainer will see. The file is streamed (memory stays flat
    for millions of records); percentiles come from a uniform sample of 100,000 lengths beyond that."""
    from lmtune.datastore.inspect import inspect_file
    from lmtune.models.load import load_tokenizer
    from lmtune.models.resolve import resolve_model_ref
    from lmtune.tokenize.templates import apply_template_choice

    tokenizer = load_tokenizer(resolve_model_ref(model))
    apply_template_choice(tokenizer, template)
    result = inspect_file(
        file,
        tokenizer,
        format=fmt,
        columns=_columns(column),
        max_length=max_length,
        train_on=train_on,
        keep=records if as_json else 0,
        example=example,
        system_merge=system_merge,
    )
    report = result.report
    if as_json:
        report["samples"] = [
            {
                "source": src,
                "input_ids": s.input_ids,
                "labels": s.labels,
                "text": tokenizer.decode(s.input_ids),
            }
            for src, s in result.samples
        ]
        typer.echo(json.dumps(report, ensure_ascii=False))
        return
    _print_inspect(report, result.example, tokenizer)


def _print_inspect(report: dict[str, Any], example: Any, tokenizer: Any) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from lmtune.tokenize.view import decoded_runs

    con = Console()
    table = Table(show_header=False, title=f"{report['file']}")
    table.add_row("format", report["format"])
    table.add_row(
        "records", f"{report['records']} read, {report['usable']} usable, {report['rejected']} rejected"
    )
    for reason, n in report["rejected_by_reason"].items():
        table.add_row(f"  rejected: {reason}", str(n))
    pct = report.get("length_percentiles", {})
    if pct:
        table.add_row("tokens per sample", "  ".join(f"{k} {v}" for k, v in pct.items()))
    hist = report.get("length_histogram", {})
    if hist:
        table.add_row("length histogram", "  ".join(f"{k}: {v}" for k, v in hist.items()))
    table.add_row(
        "tokens",
        f"{report['tokens']:,} total, {report['trained_tokens']:,} trained, "
        f"{report['truncated']} samples truncated",
    )
    con.print(table)
    if report.get("note"):
        con.print(report["note"], highlight=False)
    for r in report["rejects"][:5]:
        con.print(
            f"[yellow]rejected[/] {r['file']} record {r['record']}"
            + (f" line {r['line']}" if r["line"] else "")
            + f": {r['message']}",
            highlight=False,
        )
    if example is None:
        return
    i, source, sample = example
    con.print(
        f"\n[bold]Example {i}[/] ({source}): "
        "[bold green on grey15]trained tokens[/] vs [dim]context (label -100)[/]"
    )
    text = Text()
    for piece, trained in decoded_runs(tokenizer, sample.input_ids, sample.labels):
        text.append(piece, style="bold green on grey15" if trained else "dim")
    con.print(text)


@app.command("convert")
def convert(
    file: Path = typer.Argument(..., help="Input data file."),
    out: Path = typer.Argument(..., help="Output .jsonl of canonical {messages, tools?} records."),
    fmt: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    column: list[str] = typer.Option([], "--column", help=COLUMNS_HELP),
    on_error: str = typer.Option("skip", help="skip (write rejects beside OUT) or fail."),
) -> None:
    """Convert any supported format to canonical conversation records (OpenAI messages jsonl)."""
    from lmtune.data.load import summarize_rejects, write_jsonl, write_rejects

    result = _load(file, fmt, column, on_error)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl((c.to_dict() for c in result.records), out)
    typer.echo(f"Wrote {len(result.records)} records ({result.format} -> canonical) to {out}")
    if result.rejects:
        rej = out.with_name(out.stem + ".rejects.jsonl")
        write_rejects(result.rejects, rej)
        typer.echo(summarize_rejects(result) + f" -> {rej}")


@app.command("split")
def split(
    file: Path = typer.Argument(..., help="Input data file."),
    out_dir: Path = typer.Argument(..., help="Folder for train.jsonl, val.jsonl, test.jsonl."),
    val: float = typer.Option(0.1, help="Validation share: fraction (<1) or record count (>=1)."),
    test: float = typer.Option(0.0, help="Test share: fraction (<1) or record count (>=1)."),
    seed: int = typer.Option(42, help="Shuffle seed."),
    fmt: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    column: list[str] = typer.Option([], "--column", help=COLUMNS_HELP),
) -> None:
    """Shuffle (seeded) and split into train/val/test canonical jsonl files."""
    from lmtune.data.load import write_jsonl, write_rejects
    from lmtune.data.split import split_records

    result = _load(file, fmt, column)

    def size(x: float) -> float | int:
        return int(x) if x >= 1 else x

    parts = split_records(result.records, val_size=size(val), test_size=size(test), seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, recs in zip(("train", "val", "test"), parts):
        if recs or name == "train":
            write_jsonl((c.to_dict() for c in recs), out_dir / f"{name}.jsonl")
            typer.echo(f"{name}: {len(recs)} records -> {out_dir / (name + '.jsonl')}")
    if result.rejects:
        write_rejects(result.rejects, out_dir / "rejects.jsonl")
        typer.echo(f"{len(result.rejects)} rejected records -> {out_dir / 'rejects.jsonl'}")
