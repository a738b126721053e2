"""`lmtune config ...`: the reference generated from the schema, and resolved configs."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("schema")
def schema(
    json_schema: bool = typer.Option(False, "--json", help="Print the JSON Schema instead of Markdown."),
) -> None:
    """Print the config reference: every key, its type, default and meaning."""
    if json_schema:
        import json

        from lmtune.config.schema import RunConfig

        typer.echo(json.dumps(RunConfig.model_json_schema(), indent=2))
        return
    from lmtune.config.reference import config_reference

    typer.echo(config_reference())


@app.command("show")
def show(
    config: Path = typer.Argument(..., help="YAML config file."),
    set_: list[str] = typer.Option([], "--set", help="Override section.key=value (repeatable)."),
) -> None:
    """Validate a config and print it resolved (defaults filled in, overrides applied)."""
    from lmtune.config.loader import dump_config, load_config

    typer.echo(dump_config(load_config(config, set_)))
