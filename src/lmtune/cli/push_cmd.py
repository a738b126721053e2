"""`lmtune push TARGET REPO_ID`: a run directory or model folder to the Hugging Face Hub."""

from __future__ import annotations

import typer


def push(
    target: str = typer.Argument(..., help="A run directory, or a folder from lmtune merge / export."),
    repo_id: str = typer.Argument(..., help="The Hub repository, e.g. your-name/my-model (created if new)."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
    token: str | None = typer.Option(
        None, help="Hub token with write access; default HF_TOKEN or your login."
    ),
    message: str | None = typer.Option(None, help="Commit message."),
) -> None:
    """Upload to the Hugging Face Hub (needs a token and network)."""
    from lmtune.export.push import push as push_folder

    result = push_folder(target, repo_id, private=private, token=token, message=message)
    typer.echo(f"Uploaded {result.files} files to {result.url}")
