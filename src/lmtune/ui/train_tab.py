"""Train tab: a form becomes a config file, `lmtune train CONFIG` runs as a subprocess, and the
page follows metrics.jsonl (loss curve, tokens/s) and the log while it runs.

Stop interrupts the job as Ctrl-C would (the trainer keeps its checkpoints); Resume runs the same
config with `--resume`, which continues from the run's latest checkpoint.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError
from lmtune.run.layout import RunDir
from lmtune.ui.jobs import Job
from lmtune.ui.paths import relative
from lmtune.ui.render import code_block, loss_svg
from lmtune.ui.runs import read_metrics
from lmtune.ui.train_form import FieldSpec, form_to_raw, to_yaml, validated


@dataclass
class Preview:
    yaml: str
    command: str
    config_path: Path
    run_dir: Path
    max_steps: int


class TrainManager:
    """At most one training job per UI: the form's run, its config file, and its job."""

    def __init__(self, root: str | Path, runs_dir: str | Path, specs: list[FieldSpec]) -> None:
        self.root = Path(root).resolve()
        self.runs_dir = Path(runs_dir)
        self.specs = specs
        self.job: Job | None = None
        self.run_dir: Path | None = None
        self.config_path: Path | None = None
        self.max_steps = 0
        self.note = ""
        self._lock = threading.Lock()

    def preview(self, values: list[Any]) -> Preview:
        """The config the form describes (validated as `lmtune train` validates it) and its command."""
        raw = form_to_raw(self.specs, values, root=self.root, runs_dir=str(self.runs_dir))
        cfg = validated(raw)
        name = raw["output"]["name"]
        config_path = self.runs_dir / f"{name}.yaml"
        cmd = f"lmtune train {config_path}"
        return Preview(to_yaml(raw), cmd, config_path, Path(raw["output"]["dir"]), cfg.train.max_steps)

    def start(self, values: list[Any], *, resume: bool = False) -> str:
        with self._lock:
            if self.job is not None and self.job.running:
                raise ConfigError("A training run is already running: Stop it first.")
            p = self.preview(values)
            full = (self.root / p.config_path) if not p.config_path.is_absolute() else p.config_path
            full.parent.mkdir(parents=True, exist_ok=True)
            full.write_text(p.yaml, encoding="utf-8")
            args = ["train", str(p.config_path)] + (["--resume"] if resume else [])
            run_dir = self.root / p.run_dir if not p.run_dir.is_absolute() else p.run_dir
            if resume and RunDir(run_dir).latest_checkpoint() is None:
                raise ConfigError(
                    f"Resume: no checkpoint in {relative(run_dir, self.root)}/checkpoints. Set train.save_steps "
                    "so a run saves checkpoints, or press Start."
                )
            log = self.root / self.runs_dir / f"{p.config_path.stem}.{'resume' if resume else 'train'}.log"
            self.job = Job(args, log, self.root)
            self.run_dir, self.config_path, self.max_steps = run_dir, p.config_path, p.max_steps
            self.note = ""
            return f"Started: `{self.job.command}`"

    def resume(self, values: list[Any]) -> str:
        return self.start(values, resume=True)

    def stop(self) -> str:
        job = self.job
        if job is None or not job.running:
            return "Nothing is running."
        job.stop()
        ckpt = RunDir(self.run_dir).latest_checkpoint() if self.run_dir else None
        step = max((r.get("step", 0) for r in read_metrics(self.run_dir)), default=0) if self.run_dir else 0
        if ckpt is not None and not (ckpt / "trainer_state.json").is_file():
            self.note = (
                f"Stopped after step {step}, while {relative(ckpt, self.root)} was being written: it is "
                "incomplete, so Resume cannot continue from it. Remove that folder to resume from the one before."
            )
        elif ckpt is not None:
            self.note = (
                f"Stopped after step {step}. Checkpoint kept: {relative(ckpt, self.root)}; Resume continues "
                f"from it (`lmtune train {self.config_path} --resume`)."
            )
        else:
            self.note = (
                f"Stopped after step {step}. No checkpoint was saved yet (set train.save_steps to keep one)."
            )
        return self.note

    def poll(self) -> tuple[str, str, str]:
        """(status markdown, loss curve html, log tail) for the current or last job."""
        job = self.job
        if job is None:
            return "No training started from this page yet.", loss_svg([]), ""
        rows = read_metrics(self.run_dir) if self.run_dir else []
        step = max((r.get("step", 0) for r in rows), default=0)
        rates = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
        losses = [r["loss"] for r in rows if "loss" in r]
        total = f"/{self.max_steps}" if self.max_steps > 0 else ""
        if job.running:
            state = "stopping" if job.stopped else "running"
        elif job.error():
            state = "failed"
        elif job.stopped:
            state = "stopped"
        else:
            state = "finished"
        parts = [f"**{state}**", f"step {step}{total}"]
        if losses:
            parts.append(f"loss {losses[-1]:.4f}")
        if rates:
            parts.append(f"{rates[-1]:.0f} tokens/s")
        lines = [" · ".join(parts), "", code_block(job.command, "bash")]
        if state == "finished" and self.run_dir:
            lines.append(f"Run written to `{relative(self.run_dir, self.root)}`.")
        err = job.error()
        if err:
            lines.append(f"**error:** {err}")
        if self.note and not job.running:
            lines.append(self.note)
        return "\n".join(lines), loss_svg(rows), job.tail(25)
