"""`lmtune export TARGET OUT --format gguf|onnx|int8|int4`: ship a model in another format, verified.

A run directory is merged into its full-precision base first (as `lmtune merge` does); any other
target (alias, folder, .gguf, hub id) is exported as it is.
"""

from __future__ import annotations

from pathlib import Path

import typer

from lmtune.cli.infer_cmd import TARGET_HELP
from lmtune.errors import ConfigError

FORMATS = ("gguf", "onnx", "int8", "int4")
GGUF_QUANTS = ("f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k")


def export(
    target: str = typer.Argument(..., help=TARGET_HELP),
    out: Path = typer.Argument(..., help="gguf: the .gguf file to write; onnx, int8, int4: a folder."),
    format: str = typer.Option("gguf", "--format", "-f", help=f"One of: {', '.join(FORMATS)}."),  # noqa: A002
    quant: str = typer.Option("f16", "--quant", "-q", help=f"gguf tensor type: {', '.join(GGUF_QUANTS)}."),
    data: Path | None = typer.Option(
        None,
        "--data",
        "-d",
        help="int8/int4: held-out records for the perplexity table (default: the run's).",
    ),
    force: bool = typer.Option(False, "--force", help="Keep the file even when its verification fails."),
) -> None:
    """Export to GGUF (pure Python, no llama.cpp build), ONNX (onnxruntime, with past key values) or a
    weight-only int8/int4 folder, and verify what was written against the source model."""
    from lmtune.export.merge import plain_model

    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    if format == "gguf":
        if quant not in GGUF_QUANTS:
            raise ConfigError(f"--quant {quant!r}: GGUF export writes {', '.join(GGUF_QUANTS)}")
        if out.suffix != ".gguf":
            raise ConfigError(f"{out}: a GGUF export is one file; give a path ending in .gguf")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; choose another path")
    items = _perplexity_items(target, data) if format in ("int8", "int4") else None
    model, tokenizer, name = plain_model(target, say=typer.echo)
    if format == "gguf":
        _gguf(model, tokenizer, name, out, quant, force)
    elif format == "onnx":
        _onnx(model, tokenizer, out, force)
    else:
        from lmtune.export.quantize import export_quantized

        report = export_quantized(model, tokenizer, out, fmt=format, items=items, say=typer.echo)
        u, q = report["unquantized"], report["quantized"]
        typer.echo(
            f"Wrote {out}: {q['size_bytes'] / 2**20:.1f} MiB of weights ({100 * report['size_ratio']:.0f}% of "
            f"float32), perplexity {_f(u.get('perplexity'))} -> {_f(q.get('perplexity'))}, "
            f"{_f(u.get('tokens_per_second'), 1)} -> {_f(q.get('tokens_per_second'), 1)} tokens/s "
            "(table in README.md)"
        )


def _gguf(model, tokenizer, name: str, out: Path, quant: str, force: bool) -> None:  # noqa: ANN001
    import json

    from lmtune.export.gguf import export_gguf, verify_gguf, write_modelfile

    out.parent.mkdir(parents=True, exist_ok=True)
    export_gguf(model, tokenizer, out, quant=quant, name=name)
    typer.echo(f"Wrote {out} ({out.stat().st_size / 2**20:.1f} MiB); checking it ...")
    measured = out.with_suffix(".quant.json")
    if measured.exists():  # a k-quant: llama.cpp's quantizer, measured against the f16 file
        m = json.loads(measured.read_text(encoding="utf-8"))
        typer.echo(
            f"{quant}: {m['size_bytes'] / 2**20:.1f} MiB (f16 {m['reference_size_bytes'] / 2**20:.1f} MiB), greedy "
            f"agreement with f16 {100 * m['greedy_prefix_agreement']:.0f}% ({m['greedy_identical_prompts']}/"
            f"{m['prompts']} prompts identical), {m['tokens_per_second']:.1f} tokens/s in llama.cpp "
            f"(f16 {m['reference_tokens_per_second']:.1f}); details in {measured}"
        )
    report = verify_gguf(out, model, tokenizer, quant=quant)
    report_path = out.with_suffix(".verify.json")
    report_path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    readers = " and ".join(report["checked_with"])
    if report["passed"] is None:
        typer.echo(
            f"Verification: NOT DONE - nothing could run this architecture here; install llama.cpp to check it: "
            f"{report['llama_cpp']['skipped']}"
        )
    else:
        typer.echo(
            f"Verification in {readers}: {'passed' if report['passed'] else 'FAILED'} (details in {report_path})"
        )
        if "llama.cpp" not in report["checked_with"]:
            typer.echo(f"Not run in llama.cpp: {report['llama_cpp']['skipped']}")
    if report["passed"] is False and not force:
        out.unlink()
        raise ConfigError(
            f"the GGUF answers differently from the source model beyond the {quant} tolerance (see {report_path}); "
            "the file was removed. Pass --force to keep it."
        )
    modelfile = write_modelfile(out, tokenizer, out.parent)
    typer.echo(f"Ollama: {modelfile} (ollama create NAME -f {modelfile})")


def _onnx(model, tokenizer, out: Path, force: bool) -> None:  # noqa: ANN001
    import shutil

    from lmtune.export.onnx import export_onnx

    report = export_onnx(model, tokenizer, out, say=typer.echo)
    verdict = "passed" if report["passed"] else "FAILED"
    typer.echo(
        f"onnxruntime vs torch: max |logit diff| {report['max_abs_diff']:.3g}, greedy identical "
        f"{report['greedy_identical']}, past key values {'in' if report['kv_cache'] else 'NOT in'} the graph: "
        f"{verdict} (details in {out / 'onnx_verify.json'})"
    )
    if not report["passed"] and not force:
        shutil.rmtree(out)
        raise ConfigError(
            f"the ONNX graph answers differently from the source model (see the numbers above); {out} was "
            "removed. Pass --force to keep it."
        )


def _perplexity_items(target: str, data: Path | None) -> list | None:
    """Held-out records for the int8/int4 table: --data, else the run's eval.path (else its data.path)."""
    from lmtune.eval.items import load_eval_data
    from lmtune.run.layout import read_run_config

    path: str | None = str(data) if data else None
    if path is None:
        cfg = read_run_config(target)
        path = (cfg.get("eval") or {}).get("path") or (cfg.get("data") or {}).get("path")
    if path is None:
        typer.echo("No held-out records (--data): the table shows size and speed, no perplexity.")
        return None
    items = [i for i in load_eval_data(path, limit=64).items if i.messages]
    return items or None


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
