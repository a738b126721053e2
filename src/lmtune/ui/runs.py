"""The runs folder as the UI lists it: run directories, their state, and their metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmtune.run.layout import RunDir, is_run_dir, read_marker


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows (a line being written right now is skipped, not an error)."""
    path = RunDir(Path(run_dir)).metrics
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def run_state(run_dir: str | Path) -> str:
    run = RunDir(Path(run_dir))
    if run.summary_json.is_file():
        return "finished"
    ckpt = run.latest_checkpoint()
    if ckpt is not None:
        return f"stopped at {ckpt.name} (resumable)"
    return "incomplete"


def list_runs(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Run directories directly under `runs_dir`, newest first."""
    base = Path(runs_dir)
    if not base.is_dir():
        return []
    out = []
    for d in sorted(base.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        if d.is_dir() and is_run_dir(d):
            info = read_marker(d)
            rows = read_metrics(d)
            losses = [r["loss"] for r in rows if "loss" in r]
            out.append(
                {
                    "run": str(d),
                    "state": run_state(d),
                    "base model": info.get("base_model", "?"),
                    "method": info.get("method", "?"),
                    "steps": max((r.get("step", 0) for r in rows), default=0),
                    "last loss": round(losses[-1], 4) if losses else None,
                }
            )
    return out


def runs_markdown(runs_dir: str | Path) -> str:
    runs = list_runs(runs_dir)
    if not runs:
        return f"No runs in {runs_dir} yet."
    head = list(runs[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[k]) for k in head) + " |" for r in runs]
    return "\n".join(lines)


def run_choices(runs_dir: str | Path) -> list[str]:
    return [r["run"] for r in list_runs(runs_dir)]
