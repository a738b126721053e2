"""`lmtune models import-gguf`: turn a GGUF file into a normal Hugging Face model folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from lmtune.errors import LmtuneError

app = typer.Typer(no_args_is_help=True, help="Prepare models (GGUF import).")


@app.callback()
def _models() -> None:
    """Prepare models (GGUF import)."""


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
