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
  checkpoints/         checkpoint-N folders (train.save_steps), for --resume
  summary.md / summary.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError

MARKER = "lmtune_run.json"


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

    def latest_checkpoint(self) -> Path | None:
        if not self.checkpoints.is_dir():
            return None
        found = [p for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


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
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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
            raise ConfigError(
                f"--resume: no checkpoint found in {run.checkpoints}. Set train.save_steps so the "
                "first run saves checkpoints, or start without --resume."
            )
    elif run.root.exists() and any(run.root.iterdir()):
        if not overwrite and not _failed_attempt(run.root):
            raise ConfigError(
                f"Run directory {run.root} already exists and is not empty. Choose another "
                "output.name, add --set output.overwrite=true, or --resume to continue it."
            )
        import shutil

        shutil.rmtree(run.root)
    run.root.mkdir(parents=True, exist_ok=True)
    return run
