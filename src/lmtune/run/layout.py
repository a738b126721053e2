"""The run directory: where `lmtune train` writes, and what every later verb reads.

runs/<name>/
  config.yaml          resolved config (defaults filled in)
  lmtune_run.json      marker: base model, method, template, lmtune version
  data_stats.json      record counts, rejects by reason, token length percentiles
  rejects.jsonl        every skipped record, with file, record, line, field and reason
  adapter_config.json  \\ PEFT adapter (LoRA) ...
  adapter_model.safetensors
  model.safetensors    ... or full weights + config.json (full fine-tuning)
  tokenizer.json, tokenizer_config.json, chat_template.jinja   (the template trained with)
  metrics.jsonl        one line per log step
  loss.png             training / validation loss curves
  checkpoints/         checkpoint-N folders (train.save_steps), for --resume; each is complete: it
                       is written under checkpoints/.incomplete/ and renamed into place once its
                       lmtune_checkpoint.json (every file and its size) is on disk (train/checkpoints.py)
  summary.md / summary.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError

MARKER = "lmtune_run.json"
CHECKPOINT_MARKER = "lmtune_checkpoint.json"  # written last into a checkpoint: it is complete
STAGING = ".incomplete"  # under checkpoints/: where a checkpoint is written before it is renamed


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def data_stats(self) -> Path:
        return self.root / "data_stats.json"

    @property
    def rejects(self) -> Path:
        return self.root / "rejects.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def summary_md(self) -> Path:
        return self.root / "summary.md"

    @property
    def summary_json(self) -> Path:
        return self.root / "summary.json"

    def checkpoint_dirs(self) -> list[Path]:
        """checkpoint-N folders, oldest first (numeric order: checkpoint-10 after checkpoint-9)."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.glob("checkpoint-*") if checkpoint_step(p) is not None]
        return sorted(found, key=lambda p: checkpoint_step(p) or 0)

    def latest_checkpoint(self, report: Any = None) -> Path | None:
        """The newest complete checkpoint; each newer incomplete one is passed over with a line to `report`."""
        for path in reversed(self.checkpoint_dirs()):
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            if report is not None:
                report(f"Skipping {path}: {problem}; it is not used for --resume.")
        return None


def checkpoint_step(path: Path | None) -> int | None:
    if path is None:
        return None
    number = path.name.removeprefix("checkpoint-")
    return int(number) if path.name.startswith("checkpoint-") and number.isdigit() else None


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` is not a complete checkpoint, or None when its marker matches its files."""
    marker = path / CHECKPOINT_MARKER
    if not marker.is_file():
        return f"it has no {CHECKPOINT_MARKER} (the save did not finish)"
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError, OSError):
        return f"its {CHECKPOINT_MARKER} is unreadable"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is {file.stat().st_size} bytes, {size} were written (the file was cut off)"
    return None


def rotate_checkpoints(run: RunDir, *, keep: int | None) -> None:
    """Delete the oldest checkpoints beyond `keep` (train.save_total_limit); never the newest complete one."""
    if not keep:
        return
    import shutil

    dirs = run.checkpoint_dirs()
    newest_complete = run.latest_checkpoint()
    for path in dirs[: max(0, len(dirs) - keep)]:
        if path != newest_complete:
            shutil.rmtree(path, ignore_errors=True)


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def read_marker(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))


def read_run_config(target: str | Path) -> dict[str, Any]:
    """The resolved training config a run directory saved (config.yaml), or {} for any other target."""
    import yaml

    if not is_run_dir(target):
        return {}
    path = RunDir(Path(target)).config
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def write_json(path: Path, data: Any) -> None:
    """Written to a temporary name and renamed: a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


# What `lmtune train` writes before any training starts: a directory holding only these is an
# earlier attempt that stopped on a mistake, and may be reused without --set output.overwrite.
EARLY_FILES = {"config.yaml", "data_stats.json", "rejects.jsonl"}


def _failed_attempt(root: Path) -> bool:
    return {p.name for p in root.iterdir()} <= EARLY_FILES


def prepare_run_dir(root: str | Path, *, overwrite: bool, resume: bool) -> RunDir:
    """Create the run directory, refusing to mix a new run into an old one by accident."""
    run = RunDir(Path(root))
    if resume:
        if run.latest_checkpoint() is None:
            partial = [p.name for p in run.checkpoint_dirs()]
            found = f" ({', '.join(partial)}: incomplete, the save did not finish)" if partial else ""
            raise ConfigError(
                f"--resume: no complete checkpoint found in {run.checkpoints}{found}. Set train.save_steps "
                "so the first run saves checkpoints, or start without --resume."
            )
    elif run.root.exists() and any(run.root.iterdir()):
        if not overwrite and not _failed_attempt(run.root):
            raise ConfigError(
                f"Run directory {run.root} already exists and is not empty. Choose another "
                "output.name, add --set output.overwrite=true, or --resume to continue it."
            )
        import shutil

        shutil.rmtree(run.root)
    check_writable(run.root)
    return run


def check_writable(root: Path) -> None:
    """Create `root` and write a probe file in it, so an unwritable output is a sentence before training."""
    probe = root / ".lmtune-write-probe"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise ConfigError(
            f"output directory {root} is not writable ({why}: {err.filename or root}). Set output.dir "
            "(or output.name) to a folder you can write to, or fix its permissions."
        ) from err
