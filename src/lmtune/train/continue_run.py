"""`model.name` naming a previous run directory: its trained weights become the starting point."""

from __future__ import annotations

from typing import Any

from lmtune.errors import ConfigError


def load_previous_run(session: Any, run_dir: str, *, dtype: str, loader: Any = None, **kwargs: Any):
    raise ConfigError(f"model.name: {run_dir} is a run directory; continuing from a run is not built yet.")
