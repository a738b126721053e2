"""`lmtune merge RUN OUT_DIR`: the run's trained weights folded into its base, as a plain model folder."""

from __future__ import annotations

from pathlib import Path

import typer


def merge(
    run: Path = typer.Argument(..., help="A run directory (from lmtune train)."),
    out_dir: Path = typer.Argument(..., help="Folder to write the merged model to."),
    dtype: str = typer.Option("auto", help="auto (the base's own dtype), float32, bfloat16 or float16."),
    force: bool = typer.Option(False, "--force", help="Save even when the parity check fails."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty OUT_DIR."),
) -> None:
    """Merge LoRA / DoRA / IA3 / BitFit (and copy full / freeze) runs into a plain Hugging Face folder,
    checked for parity with the unmerged model."""
    from lmtune.export.merge import merge_run

    result = merge_run(run, out_dir, dtype=dtype, force=force, overwrite=overwrite, say=typer.echo)
    typer.echo(f"Wrote the merged model ({result.dtype}) to {result.out_dir}; parity report: parity.json")
