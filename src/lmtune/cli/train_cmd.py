"""`lmtune train CONFIG`."""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    config: Path = typer.Argument(..., help="YAML config file (see `lmtune config schema`)."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config value, e.g. --set train.max_steps=20 (repeatable)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
) -> None:
    """Fine-tune a model as the config says; writes a run directory (runs/<name>/)."""
    from lmtune.config.loader import load_config
    from lmtune.train.runner import train as run_training

    cfg = load_config(config, set_)
    run_training(cfg, resume=resume)
