"""`lmtune train CONFIG`.

Ctrl-C stops after a checkpoint and prints the exact command that resumes the run; a disk that
fills up during training names the same command.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import typer


def train(
    config: Path = typer.Argument(..., help="YAML config file (see `lmtune config schema`)."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config value, e.g. --set train.max_steps=20 (repeatable)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest checkpoint."),
    nproc: int = typer.Option(
        0,
        "--nproc",
        help="Launch N processes on this machine (torch.distributed.run; accelerate launch when "
        "distributed.config_file is an accelerate YAML). Under torchrun / accelerate launch, leave it out.",
    ),
) -> None:
    """Fine-tune a model as the config says; writes a run directory (runs/<name>/)."""
    from lmtune.config.loader import load_config

    cfg = load_config(config, set_)
    if nproc:
        from lmtune.distributed.launch import launch
        from lmtune.distributed.strategy import read_config_file

        yaml_file = None
        if cfg.distributed.config_file and read_config_file(cfg.distributed.config_file)[0] == "accelerate":
            yaml_file = cfg.distributed.config_file
        code = launch(nproc, config, list(set_), resume=resume, accelerate_yaml=yaml_file)
        if code:
            raise typer.Exit(code)
        return
    from rich.console import Console

    from lmtune.errors import StorageError
    from lmtune.train.checkpoints import TrainingInterrupted
    from lmtune.train.runner import train as run_training

    again = resume_command(config, set_)
    try:
        run_training(cfg, resume=resume)
    except TrainingInterrupted as stop:
        console = Console()
        console.print(f"[yellow]{stop}.[/]", highlight=False, soft_wrap=True)
        if stop.checkpoint is not None:
            console.print(f"Resume with: {again}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except StorageError as err:
        if getattr(err, "resumable", False):
            raise StorageError(f"{err} Resume with: {again}") from err
        raise


def resume_command(config: Path, overrides: list[str]) -> str:
    """The command line that continues this run: the same config and overrides, plus --resume."""
    parts = ["lmtune", "train", str(config)]
    for item in overrides:
        parts += ["--set", item]
    return shlex.join([*parts, "--resume"])
