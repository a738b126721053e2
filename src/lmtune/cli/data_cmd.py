"""`lmtune data inspect|convert|split`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(no_args_is_help=True)

FORMAT_HELP = "Force a format: openai, sharegpt, alpaca, dolly, prompt_completion (default: detect)."
COLUMNS_HELP = "Map a field name: canonical=yours, e.g. --column instruction=question (repeatable)."
INSPECT_FORMAT_HELP = (
    "Force a format: openai, sharegpt, alpaca, dolly, prompt_completion (sft); preference, "
    "sharegpt_ranking, openai_preference, kto (preference); text; classification (default: detect)."
)
INSPECT_COLUMNS_HELP = (
    "Map a field: canonical=yours, e.g. --column instruction=question or --column label=category; "
    "for a CSV/TSV without a header row give positions from 0: --column label=0 --column text=1 (repeatable)."
)


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
    file: Path = typer.Argument(..., help="Data file (json, jsonl, csv, tsv, parquet, txt)."),
    model: str = typer.Option(
        "smollm2-135m-instruct", help="Model whose tokenizer and chat template to use."
    ),
    task: str = typer.Option(
        "auto", help="sft, pretrain, preference or classification (default: detect from the file)."
    ),
    fmt: str = typer.Option("auto", "--format", help=INSPECT_FORMAT_HELP),
    column: list[str] = typer.Option([], "--column", help=INSPECT_COLUMNS_HELP),
    template: str | None = typer.Option(None, help="Fallback chat template (chatml, alpaca)."),
    max_length: int = typer.Option(
        1024, help="Truncation length, as data.max_length (pretrain: block length)."
    ),
    train_on: str = typer.Option("all", help="sft: all, last or all_tokens, as data.train_on."),
    text_split: str = typer.Option(
        "document", help="pretrain .txt files: document or line, as data.text_split."
    ),
    max_prompt_length: int | None = typer.Option(
        None, help="preference: shorten longer prompts, as preference.max_prompt_length."
    ),
    labels: str | None = typer.Option(
        None, help="classification: the label set in output order, comma-separated, as data.labels."
    ),
    example: int = typer.Option(1, help="Which usable record (pretrain: block) to render (1-based)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output with token ids and labels."),
    records: int = typer.Option(3, help="With --json: how many records to include token ids/labels for."),
    system_merge: str = typer.Option(
        "auto", help="auto or never, as data.system_merge (templates without a system role)."
    ),
) -> None:
    """Detected task and format, counts, rejects by reason, token lengths, and one example exactly as
    the trainer sees it: SFT trained tokens highlighted, preference prompt/chosen/rejected with their
    masks, pretraining blocks as packed, classification labels with their ids and counts. The file is
    streamed (memory stays flat for millions of records); percentiles come from a uniform sample of
    100,000 lengths beyond that."""
    from lmtune.cli.inspect_view import json_samples, print_report
    from lmtune.models.load import load_tokenizer
    from lmtune.models.resolve import resolve_model_ref
    from lmtune.tokenize.templates import apply_template_choice

    columns = _columns(column)
    chosen, why = _inspect_task(file, task, fmt, columns)
    tokenizer = load_tokenizer(resolve_model_ref(model))
    apply_template_choice(tokenizer, template)
    keep = records if as_json else 0
    common: dict[str, Any] = {"columns": columns, "max_length": max_length, "keep": keep, "example": example}
    if chosen == "pretrain":
        from lmtune.datastore.inspect_text import inspect_text

        result = inspect_text(file, tokenizer, text_split=text_split, **common)
    elif chosen == "preference":
        from lmtune.datastore.inspect_preference import inspect_preference

        result = inspect_preference(
            file, tokenizer, format=fmt, max_prompt_length=max_prompt_length, **common
        )
    elif chosen == "classification":
        from lmtune.datastore.inspect_classification import inspect_classification

        label_list = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
        result = inspect_classification(file, tokenizer, labels=label_list, **common)
    else:
        from lmtune.datastore.inspect import inspect_file

        result = inspect_file(
            file, tokenizer, format=fmt, train_on=train_on, system_merge=system_merge, **common
        )
    report = result.report
    report["task_from"] = why
    if as_json:
        report["samples"] = json_samples(report, result.samples, tokenizer)
        typer.echo(json.dumps(report, ensure_ascii=False))
        return
    print_report(report, result.example, tokenizer)


def _inspect_task(file: Path, task: str, fmt: str, columns: dict[str, str] | None) -> tuple[str, str]:
    """(task, why): --task, else the task --format names, else detected from the file."""
    from lmtune.data.formats import SFT_FORMATS
    from lmtune.data.preference import PREFERENCE_FORMATS
    from lmtune.datastore.inspect_tasks import check_column_names, check_task, detect_task
    from lmtune.errors import ConfigError

    by_format = {
        **dict.fromkeys(SFT_FORMATS, "sft"),
        **dict.fromkeys(PREFERENCE_FORMATS, "preference"),
        "text": "pretrain",
        "classification": "classification",
    }
    if fmt != "auto" and fmt not in by_format:
        raise ConfigError(f"--format '{fmt}' is not a format; use auto or one of {', '.join(by_format)}.")
    check_column_names(file, columns)
    if check_task(task) != "auto":
        if fmt != "auto" and by_format[fmt] != task:
            raise ConfigError(
                f"--format {fmt} is a {by_format[fmt]} format, not {task}: drop --format or --task."
            )
        return task, "--task"
    if fmt != "auto":
        return by_format[fmt], f"--format {fmt}"
    return detect_task(file, columns)


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
