"""`lmtune ui`: the whole workflow (data, train, chat, evaluate, export) in a browser.

The UI is a thin layer over the CLI: it reads and writes the same config files and run
directories, runs `lmtune train/eval/export/merge` as subprocesses (so a page never freezes and
every action has a command-line equivalent, shown in the page), and calls the same functions as
`lmtune data inspect` and `lmtune chat` in process. The callbacks are plain functions (tested
without a browser); `lmtune.ui.app` only lays them out with Gradio.
"""

from __future__ import annotations

from lmtune.errors import ConfigError

GRADIO_RANGE = "gradio>=6.31,<7"


def require_gradio() -> None:
    """Gradio is an optional extra: say which one when it is missing."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise ConfigError('lmtune ui needs Gradio: pip install "lmtune[ui]"')
