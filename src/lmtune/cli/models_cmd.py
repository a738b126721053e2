"""`lmtune models import-gguf`: turn a GGUF file into a normal Hugging Face model folder.
`lmtune models list`: the supported model families and what is verified for each."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from lmtune.errors import LmtuneError

app = typer.Typer(no_args_is_help=True, help="Supported model families; prepare models (GGUF import).")


@app.callback()
def _models() -> None:
    """Supported model families; prepare models (GGUF import)."""


@app.command("list")
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the table as Markdown (as docs/models.md has it).")
    ] = False,
) -> None:
    """The model families lmtune supports and what is verified for each (docs/models.md).

    train: LoRA and QLoRA SFT on a tiny model of the family (loss falls); chat: lmtune's replies equal
    the model's own greedy decoding; masking: the family's template masks multi-turn records; merge:
    merge parity; gguf: the GGUF export answers in real llama.cpp; onnx: onnxruntime equals torch
    (refused: said up front with the reason). Reads a table only: no model is loaded.
    """
    import json

    from rich.console import Console
    from rich.table import Table

    from lmtune.models.families import COLUMNS, FAMILIES, LORA_TARGETS, support_markdown, support_rows

    if markdown:
        typer.echo(support_markdown(), nl=False)
        return
    if as_json:
        rows = [dict(zip(["family", "model_type", *COLUMNS], r)) for r in support_rows()]
        for row, fam in zip(rows, FAMILIES.values()):
            row["lora_targets"] = list(LORA_TARGETS.get(fam.model_type, ())) or "all-linear"
        typer.echo(json.dumps(rows, indent=2))
        return
    style = {"yes": "green", "no": "red", "refused": "yellow", "untested": "dim"}
    table = Table(title="Model families (lmtune models list; details in docs/models.md)")
    for col in ("family", "model_type", *COLUMNS):
        table.add_column(col, no_wrap=True)
    for family, model_type, *marks in support_rows():
        table.add_row(family, model_type, *(f"[{style.get(m, 'default')}]{m}[/]" for m in marks))
    Console(highlight=False, width=max(Console().width, 110)).print(table)


@app.command("import-gguf")
def import_gguf_cmd(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="The .gguf file to import (as written by llama.cpp).")
    ],
    out_dir: Annotated[
        Path,
        typer.Argument(metavar="OUT_DIR", help="New or empty folder to write the Hugging Face model into."),
    ],
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="Weight dtype to save: auto (what transformers dequantizes to, float32), float32, "
            "bfloat16 or float16.",
        ),
    ] = "auto",
) -> None:
    """Dequantize a GGUF once into a normal Hugging Face model folder.

    Writes model.safetensors, config.json, the tokenizer with its chat template and
    generation_config.json, so later loads take a second instead of re-reading the GGUF.
    """
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    try:
        from lmtune.models.gguf_import import check_gguf_file, import_gguf

        start = time.perf_counter()
        console.print(f"Importing {check_gguf_file(file)} ...")
        out = import_gguf(file, out_dir, dtype=dtype)
        seconds = time.perf_counter() - start
    except LmtuneError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    console.print(f"Wrote {out} in {seconds:.1f} s ({size / 1e6:.0f} MB):")
    for path in sorted(out.iterdir()):
        console.print(f"  {path.name}")
    console.print(f"Use it with model: {out}")
