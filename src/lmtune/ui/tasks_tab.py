"""Evaluate and Export tabs: `lmtune eval` / `lmtune export` / `lmtune merge` as subprocesses,
followed live, then the report they wrote shown in the page."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

from lmtune.errors import ConfigError
from lmtune.ui.jobs import Job
from lmtune.ui.paths import confined, relative
from lmtune.ui.render import code_block, report_table

EXPORT_FORMATS = ("merge", "gguf", "onnx", "int8", "int4")
POLL_S = 0.5


def follow(job: Job, title: str) -> Iterator[str]:
    """Progress while the job runs: its latest output lines, every POLL_S seconds."""
    while job.running:
        elapsed = time.time() - job.started
        yield f"**{title}: running** ({elapsed:.0f} s)\n\n{code_block(job.command, 'bash')}\n\n{code_block(job.tail(12))}"
        time.sleep(POLL_S)


def _target(root: Path, target: str) -> str:
    target = (target or "").strip()
    if not target:
        raise ConfigError("Pick a run (or type a model) first.")
    if (root / target).exists():
        return relative(confined(target, root, what="run or model folder"), root)
    return target  # an alias or hub id


def eval_args(
    root: str | Path, target: str, data: str, metrics: str, limit: int | None
) -> tuple[list[str], Path]:
    """`lmtune eval` arguments and the folder its report goes to."""
    root = Path(root).resolve()
    t = _target(root, target)
    data_rel = relative(confined(data, root, what="data file"), root)
    out = Path(t) / "eval" if (root / t).is_dir() else Path("eval")
    args = ["eval", t, "--data", data_rel, "--out", str(out), "--name", "ui"]
    if metrics and metrics.strip() and metrics.strip() != "auto":
        args += ["--metrics", metrics.strip()]
    if limit:
        args += ["--limit", str(int(limit))]
    return args, root / out


def run_eval(
    root: str | Path, target: str, data: str, metrics: str = "auto", limit: int | None = None
) -> Iterator[str]:
    """Yield progress, then the markdown report `lmtune eval` wrote (eval/ui.md)."""
    args, out = eval_args(root, target, data, metrics, limit)
    job = Job(args, out / "ui.log", root)
    yield from follow(job, "evaluate")
    err = job.error()
    if err:
        yield f"**error:** {err}\n\n{code_block(job.command, 'bash')}"
        return
    report = out / "ui.md"
    body = report.read_text(encoding="utf-8") if report.is_file() else code_block(job.tail(40))
    # The report's images are files beside it; the page names them instead of showing broken links.
    body = re.sub(r"!\[[^\]]*\]\(([^)]+)\)", lambda m: f"(plot: `{relative(out / m.group(1), root)}`)", body)
    yield f"**evaluate: done** · report: `{relative(report, root)}`\n\n{code_block(job.command, 'bash')}\n\n{body}"


def export_args(root: str | Path, target: str, fmt: str, out: str, quant: str) -> tuple[list[str], Path]:
    root = Path(root).resolve()
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    t = _target(root, target)
    dest = confined(out, root, what="output path", must_exist=False)
    rel = relative(dest, root)
    if fmt == "merge":
        return ["merge", t, rel], dest
    args = ["export", t, rel, "--format", fmt]
    if fmt == "gguf":
        args += ["--quant", quant or "f16"]
    return args, dest


QUANTIZED = ("int8", "int4")


def parity_report(fmt: str, dest: Path) -> tuple[str, dict | None]:
    """The verification file each export writes: (its path, its content)."""
    if fmt == "merge":
        path = dest / "parity.json"
    elif fmt == "gguf":
        path = dest.with_suffix(".verify.json")
    elif fmt == "onnx":
        path = dest / "onnx_verify.json"
    else:  # int8 / int4: export/quantize.py's measurement
        path = dest / "quantization.json"
    if not path.is_file():
        return str(path), None
    return str(path), json.loads(path.read_text(encoding="utf-8"))


def verdict(report: dict) -> str:
    """passed / FAILED / not checked, from the report's own verdict: `passed` for merge, GGUF and ONNX,
    the perplexity gate (`ppl_gate`) for the quantized folders."""
    if "passed" in report:
        return {True: "passed", False: "FAILED"}.get(report["passed"], "not checked")
    gate = str(report.get("ppl_gate", ""))
    if gate == "passed":
        return "passed"
    if gate in ("failed", "forced"):
        return f"FAILED (perplexity gate {gate})"
    return f"not checked ({gate})" if gate else "not checked"


def report_markdown(fmt: str, report: dict, shown: str) -> str:
    """The parity report as the page shows it: the verdict, then its figures as a table (the
    quantized formats' measured table, original vs quantized, as in their README.md)."""
    head = f"**Parity: {verdict(report)}** (`{shown}`)\n\n"
    if fmt in QUANTIZED and isinstance(report.get("quantized"), dict):
        from lmtune.export.quality import markdown_table

        table = "\n".join(markdown_table(report, original="unquantized (float32)", quantized=fmt))
        return head + table + "\n\n" + report_table(report, skip=("unquantized", "quantized"))
    return head + report_table(report)


def default_export_path(target: str, fmt: str) -> str:
    name = Path(target.rstrip("/")).name or "model"
    base = str(Path(target).parent / f"{name}-export") if target else "exports"
    return f"{base}/{name}.gguf" if fmt == "gguf" else f"{base}/{fmt}"


def run_export(root: str | Path, target: str, fmt: str, out: str, quant: str = "f16") -> Iterator[str]:
    """Yield the export's stages as it prints them, then its parity report."""
    args, dest = export_args(root, target, fmt, out, quant)
    log = dest.parent / f"{dest.name}.export.log"
    job = Job(args, log, root)
    yield from follow(job, f"export ({fmt})")
    err = job.error()
    if err:
        yield f"**error:** {err}\n\n{code_block(job.command, 'bash')}\n\n{code_block(job.tail(12))}"
        return
    path, report = parity_report(fmt, dest)
    root_p = Path(root).resolve()
    shown = relative(Path(path), root_p)
    table = (
        f"(no parity report found at `{shown}`)" if report is None else report_markdown(fmt, report, shown)
    )
    yield (
        f"**export ({fmt}): done** · wrote `{relative(dest, root_p)}`\n\n{code_block(job.command, 'bash')}\n\n"
        f"{code_block(job.tail(8))}\n\n### Parity report\n\n{table}"
    )
