"""task: rloo — registered here for train/runner.py; the task lives in lmtune.rl.task."""

from lmtune.rl.task import run

__all__ = ["run"]
