"""`lmtune export TARGET OUT --format gguf|onnx|int8|int4|gptq|awq`: ship a model in another format, verified.

A run directory is merged into its full-precision base first (as `lmtune merge` does); any other
target (alias, folder, .gguf, hub id) is exported as it is. Every quantized export (int8, int4, gptq,
awq, the GGUF quants) is measured against the unquantized model (export/quality.py) and fails when
its held-out perplexity rises more than --max-ppl-increase, unless --force.
"""

from __future__ import annotations

from pathlib import Path

import typer

from lmtune.cli.infer_cmd import TARGET_HELP
from lmtune.errors import ConfigError
from lmtune.export.compressed import DEFAULT_CALIB_SAMPLES
from lmtune.export.quality import DEFAULT_MAX_PPL_INCREASE, MEASURED_GGUF_QUANTS

FORMATS = ("gguf", "onnx", "int8", "int4", "gptq", "awq")
GGUF_QUANTS = ("f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k")


def export(
    target: str = typer.Argument(..., help=TARGET_HELP),
    out: Path = typer.Argument(
        ..., help="gguf: the .gguf file to write; onnx, int8, int4, gptq, awq: a folder."
    ),
    format: str = typer.Option("gguf", "--format", "-f", help=f"One of: {', '.join(FORMATS)}."),  # noqa: A002
    quant: str = typer.Option("f16", "--quant", "-q", help=f"gguf tensor type: {', '.join(GGUF_QUANTS)}."),
    data: Path | None = typer.Option(
        None,
        "--data",
        "-d",
        help="Quantized exports: held-out records for perplexity (default: the run's validation records).",
    ),
    calib: Path | None = typer.Option(
        None, "--calib", help="gptq/awq: calibration records (default: the run's training records)."
    ),
    calib_samples: int = typer.Option(
        DEFAULT_CALIB_SAMPLES, "--calib-samples", help="gptq/awq: how many calibration records to use."
    ),
    bits: int = typer.Option(4, "--bits", help="gptq/awq: weight bits, 4 (W4A16) or 8 (W8A16)."),
    group_size: int = typer.Option(
        128, "--group-size", help="gptq/awq: input columns per quantization group."
    ),
    max_ppl_increase: float = typer.Option(
        DEFAULT_MAX_PPL_INCREASE,
        "--max-ppl-increase",
        help="Quantized exports fail when held-out perplexity rises more than this (relative; 0.1 = 10%).",
    ),
    force: bool = typer.Option(
        False, "--force", help="Keep the export even when its verification or perplexity limit fails."
    ),
) -> None:
    """Export to GGUF (pure Python, no llama.cpp build), ONNX (onnxruntime, with past key values), a
    weight-only int8/int4 folder or a GPTQ/AWQ compressed-tensors folder (llm-compressor), verify what
    was written against the source model and measure what quantization cost."""
    from lmtune.export.merge import plain_model
    from lmtune.export.quality import check_limit

    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    check_limit(max_ppl_increase)
    if format == "gguf":
        if quant not in GGUF_QUANTS:
            raise ConfigError(f"--quant {quant!r}: GGUF export writes {', '.join(GGUF_QUANTS)}")
        if out.suffix != ".gguf":
            raise ConfigError(f"{out}: a GGUF export is one file; give a path ending in .gguf")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; choose another path")
    if format in ("gptq", "awq"):
        from lmtune.export.compressed import require

        require(format)
        if calib_samples < 1:
            raise ConfigError(
                f"--calib-samples {calib_samples}: give at least 1 (default {DEFAULT_CALIB_SAMPLES})"
            )
    measured = format in ("int8", "int4", "gptq", "awq") or (
        format == "gguf" and quant in MEASURED_GGUF_QUANTS
    )
    records = None
    if measured:
        from lmtune.export.records import export_records

        records = export_records(target, data=data, calib=calib, need_calib=format in ("gptq", "awq"))
        if not records.held_out:
            typer.echo(
                "No held-out records (--data): the measurement shows size, agreement and speed, no perplexity."
            )
    model, tokenizer, name = plain_model(target, say=typer.echo)
    if format == "gguf":
        _gguf(model, tokenizer, name, out, quant, force, records, max_ppl_increase)
    elif format == "onnx":
        _onnx(model, tokenizer, out, force)
    elif format in ("gptq", "awq"):
        from lmtune.export.compressed import export_compressed, write_report
        from lmtune.export.quality import gate_folder, summary_line

        report = export_compressed(
            model, tokenizer, out, fmt=format, records=records, bits=bits, group_size=group_size,
            calib_samples=calib_samples, say=typer.echo,
        )  # fmt: skip
        typer.echo(summary_line(report, format))
        report["forced"] = gate_folder(out, report, max_ppl_increase, force=force)
        write_report(out, report)
        _forced(report["forced"])
        typer.echo(
            f"Wrote {out} (compressed-tensors; loads with from_pretrained, serves with vLLM: see its README.md)"
        )
    else:
        from lmtune.export.quality import summary_line
        from lmtune.export.quantize import export_quantized

        report = export_quantized(
            model, tokenizer, out, fmt=format, items=records.held_out, held_out_source=records.held_out_source,
            max_ppl_increase=max_ppl_increase, force=force, say=typer.echo,
        )  # fmt: skip
        typer.echo(summary_line(report, format))
        _forced(report["forced"])
        typer.echo(f"Wrote {out} (table in its README.md)")


def _forced(reason: str | None) -> None:
    if reason:
        typer.echo(f"Kept because of --force: {reason}")


def _gguf(model, tokenizer, name: str, out: Path, quant: str, force: bool, records, limit: float) -> None:  # noqa: ANN001
    import json

    from lmtune.export.gguf import export_gguf, verify_gguf, write_modelfile

    out.parent.mkdir(parents=True, exist_ok=True)
    export_gguf(model, tokenizer, out, quant=quant, name=name)
    typer.echo(f"Wrote {out} ({out.stat().st_size / 2**20:.1f} MiB); checking it ...")
    if records is not None:
        _measure_gguf(model, tokenizer, name, out, quant, force, records, limit)
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


def _measure_gguf(
    model, tokenizer, name: str, out: Path, quant: str, force: bool, records, limit: float
) -> None:  # noqa: ANN001
    """A quantized GGUF measured in llama.cpp against an f16 file (gguf/quality.py), and the limit."""
    from lmtune.export.gguf import llamacpp
    from lmtune.export.gguf.quality import measure_gguf, write_report
    from lmtune.export.quality import perplexity_gate, summary_line

    if not llamacpp.available():
        typer.echo(
            f"Not measured: {quant} is measured in llama.cpp, which is not installed ({llamacpp.INSTALL_HINT})"
        )
        return
    typer.echo(
        f"Measuring {quant} against an f16 GGUF in llama.cpp on {records.held_out_source or 'no records'} ..."
    )
    report = measure_gguf(out, model, tokenizer, quant=quant, items=records.held_out, name=name)
    report["held_out"] = records.held_out_source
    typer.echo(summary_line(report, f"{quant} (vs f16, llama.cpp)"))
    try:
        report["forced"] = perplexity_gate(report, limit, force=force, what=f"{quant} GGUF {out}")
    except ConfigError:
        out.unlink()
        write_report(out, report)
        raise
    path = write_report(out, report)
    _forced(report["forced"])
    typer.echo(f"Measurements in {path}")


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
