"""What `lmtune data inspect` prints for each task: one table of counts and lengths, the notes, the
first rejects, and one example as the trainer sees it (trained tokens highlighted)."""

from __future__ import annotations

from typing import Any

TRAINED = "bold green on grey15"
CONTEXT = "dim"
REJECTED = "bold red on grey15"
SEPARATOR = "bold magenta"
IGNORE = -100
MAX_LABEL_ROWS = 30  # label count rows printed (--json has every label)


def json_samples(report: dict[str, Any], samples: list[Any], tokenizer: Any) -> list[dict[str, Any]]:
    """--json: the kept samples with token ids (and what they decode to)."""
    task = report["task"]
    if task in ("sft", "pretrain"):
        return [
            {
                "source": src,
                "input_ids": s.input_ids,
                "labels": s.labels,
                "text": tokenizer.decode(s.input_ids),
            }
            for src, s in samples
        ]
    if task == "classification":
        return [{**s, "decoded": tokenizer.decode(s["input_ids"])} for s in samples]
    out = []
    for s in samples:
        row = dict(s)
        row["text"] = {k: tokenizer.decode(s[k]) for k in s if k.endswith("_ids")}
        out.append(row)
    return out


def print_report(report: dict[str, Any], example: Any, tokenizer: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    table = Table(show_header=False, title=f"{report['file']}")
    task = report["task"]
    table.add_row("task", task + (f" ({report['task_from']})" if report.get("task_from") else ""))
    table.add_row("format", report["format"])
    unit = {
        "pretrain": "documents",
        "preference": "pairs" if report.get("kind") == "pairs" else "KTO records",
    }.get(task)
    table.add_row(
        "records",
        f"{report['records']} read, {report['usable']} usable{f' {unit}' if unit else ''}, "
        f"{report['rejected']} rejected",
    )
    for reason, n in report["rejected_by_reason"].items():
        table.add_row(f"  rejected: {reason}", str(n))
    {"sft": _sft_rows, "pretrain": _text_rows, "preference": _pref_rows, "classification": _cls_rows}[task](
        table, report
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
    if example is not None:
        {
            "sft": _sft_example,
            "pretrain": _text_example,
            "preference": _pref_example,
            "classification": _cls_example,
        }[task](con, report, example, tokenizer)


def _lengths(table: Any, report: dict[str, Any], what: str) -> None:
    pct = report.get("length_percentiles", {})
    if pct:
        table.add_row(f"tokens per {what}", "  ".join(f"{k} {v}" for k, v in pct.items()))
    hist = report.get("length_histogram", {})
    if hist:
        table.add_row("length histogram", "  ".join(f"{k}: {v}" for k, v in hist.items()))


def _sft_rows(table: Any, report: dict[str, Any]) -> None:
    _lengths(table, report, "sample")
    table.add_row(
        "tokens",
        f"{report['tokens']:,} total, {report['trained_tokens']:,} trained, "
        f"{report['truncated']} samples truncated",
    )


def _text_rows(table: Any, report: dict[str, Any]) -> None:
    _lengths(table, report, "document")
    sep = report["separators"]
    table.add_row(
        "separators",
        f"before each document {sep['before'] or 'nothing'}, after {sep['after'] or 'nothing'}",
    )
    table.add_row(
        "blocks",
        f"{report['blocks']:,} blocks of {report['max_length']} tokens from {report['tokens']:,} tokens "
        f"(last block {report['last_block_tokens']}, {report['dropped_tokens']} dropped); every token trained",
    )


def _pref_rows(table: Any, report: dict[str, Any]) -> None:
    answers = ("completion",) if report["kind"] == "kto" else ("chosen", "rejected")
    for part in ("prompt", *answers):
        pct = report.get(f"{part}_length_percentiles", {})
        table.add_row(f"{part} tokens", "  ".join(f"{k} {v}" for k, v in pct.items()))
    _lengths(table, report, "sequence (prompt + answer)")
    if report.get("labels"):
        lab = report["labels"]
        table.add_row("labels", f"{lab['desirable']} desirable, {lab['undesirable']} undesirable")
    table.add_row(
        "tokens",
        f"{report['tokens']:,} total, {report['trained_tokens']:,} trained (answers), "
        f"{report['truncated']} sequences cut at {report['max_length']}",
    )


def _cls_rows(table: Any, report: dict[str, Any]) -> None:
    table.add_row("columns", report["columns"])
    total = sum(report["label_counts"].values()) or 1
    table.add_row(
        "labels",
        f"{len(report['labels'])} ({report['label_origin']}): "
        + ", ".join(f"'{k}' -> {v}" for k, v in report["label_map"].items()),
    )
    counts = list(report["label_counts"].items())
    for label, n in counts[:MAX_LABEL_ROWS]:
        table.add_row(f"  label '{label}'", f"{n} ({100 * n / total:.1f}%)")
    if len(counts) > MAX_LABEL_ROWS:
        rest = sum(n for _, n in counts[MAX_LABEL_ROWS:])
        table.add_row(
            f"  {len(counts) - MAX_LABEL_ROWS} more labels",
            f"{rest} ({100 * rest / total:.1f}%) (--json lists all)",
        )
    _lengths(table, report, "text")
    table.add_row(
        "tokens",
        f"{report['tokens']:,} total, {report['truncated']} texts truncated at {report['max_length']}",
    )


def _runs(tokenizer: Any, ids: list[int], labels: list[int], on: str, off: str) -> Any:
    from rich.text import Text

    from lmtune.tokenize.view import decoded_runs

    text = Text()
    for piece, trained in decoded_runs(tokenizer, ids, labels):
        text.append(piece, style=on if trained else off)
    return text


def _sft_example(con: Any, report: dict[str, Any], example: Any, tokenizer: Any) -> None:
    i, source, sample = example
    con.print(
        f"\n[bold]Example {i}[/] ({source}): [{TRAINED}]trained tokens[/] vs [{CONTEXT}]context (label -100)[/]"
    )
    con.print(_runs(tokenizer, sample.input_ids, sample.labels, TRAINED, CONTEXT))


def _text_example(con: Any, report: dict[str, Any], example: Any, tokenizer: Any) -> None:
    i, source, sample = example
    seps = set(
        tokenizer.convert_tokens_to_ids(report["separators"]["before"] + report["separators"]["after"])
    )
    marks = [IGNORE if t in seps else t for t in sample.input_ids]
    con.print(
        f"\n[bold]Block {i}[/] of {report['blocks']:,} ({len(sample.input_ids)} tokens, every one trained): "
        f"[{TRAINED}]document text[/] and [{SEPARATOR}]separators[/]"
    )
    con.print(_runs(tokenizer, sample.input_ids, marks, TRAINED, SEPARATOR))


def _pref_example(con: Any, report: dict[str, Any], example: Any, tokenizer: Any) -> None:
    from rich.text import Text

    i, source, view = example
    con.print(
        f"\n[bold]Example {i}[/] ({source}): [{CONTEXT}]prompt (mask 0)[/], then each answer (mask 1, trained)"
    )
    con.print(Text(tokenizer.decode(view["prompt_ids"]), style=CONTEXT))
    answers = ("completion",) if report["kind"] == "kto" else ("chosen", "rejected")
    for a in answers:
        cut = view[a]
        kept = sum(cut["completion_mask"])
        n = len(view[f"{a}_ids"])
        title = (
            a if a != "completion" else f"completion ({'desirable' if view.get('label') else 'undesirable'})"
        )
        extra = f", cut to {kept} at max_length" if kept < n else ""
        con.print(f"[bold]{title}[/] ({n} tokens{extra}):")
        style = REJECTED if a == "rejected" or (a == "completion" and not view.get("label")) else TRAINED
        con.print(Text(tokenizer.decode(view[f"{a}_ids"][:kept]), style=style))


def _cls_example(con: Any, report: dict[str, Any], example: Any, tokenizer: Any) -> None:
    from rich.text import Text

    i, source, view = example
    con.print(
        f"\n[bold]Example {i}[/] ({source}): label '{view['label']}' -> id {view['label_id']}, "
        f"{len(view['input_ids'])} tokens as the model reads them:"
    )
    con.print(Text(tokenizer.decode(view["input_ids"]), style=TRAINED))
