"""`lmtune train CONFIG --nproc N`: the same command relaunched N times on this machine.

The launchers are the standard ones, called as libraries: torch.distributed.run (what `torchrun`
runs) with a standalone rendezvous on a free local port, or, when distributed.config_file is an
accelerate YAML, accelerate's own `launch` command with that file. Each child runs
`python -m lmtune.cli.app train CONFIG ...` without --nproc and reads its rank from the environment.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lmtune.errors import ConfigError


def child_command(config: Path, overrides: list[str], *, resume: bool) -> list[str]:
    """The `lmtune train` arguments each launched process runs (everything but --nproc)."""
    args = ["train", str(config)]
    for item in overrides:
        args += ["--set", item]
    if resume:
        args.append("--resume")
    return args


def torchrun_argv(nproc: int, child: list[str]) -> list[str]:
    return ["--standalone", f"--nproc-per-node={nproc}", "-m", "lmtune.cli.app", *child]


def accelerate_argv(nproc: int, config_file: str, child: list[str]) -> list[str]:
    return ["--config_file", config_file, "--num_processes", str(nproc), "-m", "lmtune.cli.app", *child]


def launch(
    nproc: int, config: Path, overrides: list[str], *, resume: bool, accelerate_yaml: str | None
) -> int:
    """Run the training in `nproc` processes and return the exit code (the first failing child's)."""
    import os

    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}: give the number of processes to start (1 or more).")
    if "WORLD_SIZE" in os.environ:
        raise ConfigError(
            "--nproc inside an already launched process (WORLD_SIZE is set): drop --nproc when running "
            "under torchrun or accelerate launch."
        )
    child = child_command(config, overrides, resume=resume)
    if accelerate_yaml:
        from accelerate.commands.launch import launch_command, launch_command_parser

        args = launch_command_parser().parse_args(accelerate_argv(nproc, accelerate_yaml, child))
        try:
            launch_command(args)
        except SystemExit as stop:
            return int(stop.code or 0)
        except Exception as err:  # accelerate raises CalledProcessError / ChildFailedError on a failed child
            print(f"lmtune: a launched process failed ({type(err).__name__})", file=sys.stderr)
            return 2 if "exitcode: 2" in str(err) else 1
        return 0
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    try:
        run(get_args_parser().parse_args(torchrun_argv(nproc, child)))
    except ChildFailedError as err:
        codes = [f.exitcode for f in err.failures.values()]
        return 2 if 2 in codes else (codes[0] or 1)
    return 0
