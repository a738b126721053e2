"""`lmtune train`: pick the task's module and run it.

Each task (train/sft.py, pretrain.py, classification.py, preference.py) is a short script over the
shared steps in train/session.py: run directory, data, tokenizer, model and method, trainer, save,
summary.
"""

from __future__ import annotations

import importlib
from typing import Any

from lmtune.config.schema import RunConfig
from lmtune.train.session import RunResult, run_name

__all__ = ["RunResult", "run_name", "train"]


def train(cfg: RunConfig, *, resume: bool = False, console: Any = None) -> RunResult:
    module = importlib.import_module(f"lmtune.train.{cfg.task}")
    return module.run(cfg, resume=resume, console=console)
