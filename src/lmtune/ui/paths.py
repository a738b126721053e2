"""File paths typed or picked in the UI, confined to the working directory.

The UI may be reached by anyone who can reach its port, so it never reads or writes outside the
folder `lmtune ui` was started in (symlinks are resolved before the check).
"""

from __future__ import annotations

import os
from pathlib import Path

from lmtune.errors import ConfigError

DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".txt")
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "checkpoints", ".cache"}


def confined(path: str | Path, root: str | Path, *, what: str = "file", must_exist: bool = True) -> Path:
    """`path` (relative to `root`, or absolute) resolved, refused unless it lies inside `root`."""
    text = str(path).strip()
    if not text:
        raise ConfigError(f"No {what} given: pick one or type a path relative to {root}.")
    base = Path(root).resolve()
    p = Path(text).expanduser()
    full = (p if p.is_absolute() else base / p).resolve()
    if full != base and base not in full.parents:
        raise ConfigError(
            f"{text}: outside the working directory {base}; the UI only reads and writes inside it. "
            f"Fix: copy the {what} into {base}, or start `lmtune ui` from a folder that contains it."
        )
    if must_exist and not full.exists():
        raise ConfigError(f"{text}: no such {what} in {base}.")
    return full


def relative(path: Path, root: str | Path) -> str:
    """`path` as the user would type it from `root` (absolute when outside)."""
    try:
        return str(path.resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def list_data_files(root: str | Path, *, limit: int = 300, depth: int = 4) -> list[str]:
    """Data files under `root` (relative paths) for the pickers: shallow first, hidden folders and
    run checkpoints skipped, at most `limit`."""
    base = Path(root).resolve()
    out: list[str] = []
    for folder, dirs, files in os.walk(base):
        rel = Path(folder).relative_to(base)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
        if len(rel.parts) >= depth:
            dirs[:] = []
        for f in sorted(files):
            if f.endswith(DATA_SUFFIXES) and not f.endswith(".rejects.jsonl") and f != "metrics.jsonl":
                out.append(str(rel / f))
                if len(out) >= limit:
                    return out
    return out
