"""Data tab: what `lmtune data inspect FILE` prints, as a page (same functions, same numbers)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

from lmtune.ui.paths import confined, relative
from lmtune.ui.render import code_block, highlighted, histogram

_TOKENIZERS: dict[tuple[str, str | None], Any] = {}
_LOCK = threading.Lock()


def tokenizer_for(model: str, template: str | None) -> Any:
    """The model's tokenizer with the template choice applied, loaded once per (model, template)."""
    from lmtune.models.load import load_tokenizer
    from lmtune.models.resolve import resolve_model_ref
    from lmtune.tokenize.templates import apply_template_choice

    key = (model, template or None)
    with _LOCK:
        if key not in _TOKENIZERS:
            tok = load_tokenizer(resolve_model_ref(model))
            apply_template_choice(tok, template or None)
            _TOKENIZERS[key] = tok
        return _TOKENIZERS[key]


def inspect_command(path: str, model: str, fmt: str, max_length: int, train_on: str, example: int) -> str:
    parts = ["lmtune data inspect", path, f"--model {model}"]
    if fmt != "auto":
        parts.append(f"--format {fmt}")
    if max_length != 1024:
        parts.append(f"--max-length {max_length}")
    if train_on != "all":
        parts.append(f"--train-on {train_on}")
    if example != 1:
        parts.append(f"--example {example}")
    return " ".join(parts)


def inspect_data(
    root: str | Path,
    path: str,
    model: str,
    fmt: str = "auto",
    max_length: int = 1024,
    train_on: str = "all",
    example: int = 1,
    template: str | None = None,
) -> tuple[str, str, str]:
    """(summary markdown, histogram html, example html) for a data file inside `root`."""
    from lmtune.datastore.inspect import inspect_file
    from lmtune.tokenize.view import decoded_runs

    file = confined(path, root, what="data file")
    rel = relative(file, root)
    # Read it by the path the user sees (the server runs in `root`), so its messages and rejects name
    # the file exactly as `lmtune data inspect` run there does.
    read_as = Path(rel) if Path.cwd().resolve() == Path(root).resolve() else file
    max_length, example = int(max_length), int(example)
    tokenizer = tokenizer_for(model, template)
    result = inspect_file(
        read_as, tokenizer, format=fmt, max_length=max_length, train_on=train_on, example=example
    )
    r = result.report
    lines = [
        f"### {rel}",
        f"**Detected format: `{r['format']}`**",
        "",
        "| field | value |",
        "|---|---|",
        f"| records | {r['records']} read, {r['usable']} usable, {r['rejected']} rejected |",
    ]
    lines += [f"| rejected: {reason} | {n} |" for reason, n in r["rejected_by_reason"].items()]
    pct = r.get("length_percentiles") or {}
    if pct:
        lines.append("| tokens per sample | " + ", ".join(f"{k} {v}" for k, v in pct.items()) + " |")
    lines.append(
        f"| tokens | {r['tokens']:,} total, {r['trained_tokens']:,} trained, {r['truncated']} samples truncated |"
    )
    if r.get("note"):
        lines += ["", str(r["note"])]
    for rej in r["rejects"][:5]:
        where = f"record {rej['record']}" + (f" line {rej['line']}" if rej.get("line") else "")
        lines.append(f"\n- rejected {rej['file']} {where}: {rej['message']}")
    lines += [
        "",
        "Same as:",
        code_block(inspect_command(rel, model, fmt, max_length, train_on, example), "bash"),
    ]
    if result.example is None:
        shown = "<p>No usable record to render.</p>"
    else:
        i, source, sample = result.example
        shown = f"<p><b>Example {i}</b> ({source})</p>" + highlighted(
            decoded_runs(tokenizer, sample.input_ids, sample.labels)
        )
    return "\n".join(lines), histogram(r.get("length_histogram") or {}), shown


def save_upload(root: str | Path, uploaded: str | None) -> str:
    """Copy an uploaded file into ROOT/uploads/ (so every later step reads inside the working
    directory) and return its relative path."""
    if not uploaded:
        return ""
    src = Path(uploaded)
    dest_dir = Path(root).resolve() / "uploads"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.name
    shutil.copyfile(src, dest)
    return relative(dest, root)
