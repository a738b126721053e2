"""`lmtune ui`: the web UI (Gradio, optional extra lmtune[ui])."""

from __future__ import annotations

from pathlib import Path

import typer


def ui(
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on; 0.0.0.0 exposes the UI to your network."
    ),
    port: int = typer.Option(7860, help="Port to listen on."),
    runs_dir: str = typer.Option("runs", help="Folder (inside the working directory) for configs and runs."),
    share: bool = typer.Option(
        False, "--share", help="Also open a public Gradio share link (off by default)."
    ),
) -> None:
    """Data, Train, Chat, Evaluate and Export in a browser, over the same config files and run
    directories as the CLI. Files are read and written only inside the working directory."""
    from lmtune.ui import require_gradio
    from lmtune.ui.paths import confined

    require_gradio()
    confined(runs_dir, Path.cwd(), what="runs folder", must_exist=False)
    from lmtune.ui.app import launch

    launch(Path.cwd(), host=host, port=port, runs_dir=runs_dir, share=share)
