"""The `lmtune` command. Heavy libraries are imported inside commands so `--help` is instant."""

from __future__ import annotations

import sys

import typer

from lmtune.cli import (
    config_cmd,
    data_cmd,
    estimate_cmd,
    eval_cmd,
    export_cmd,
    infer_cmd,
    merge_cmd,
    models_cmd,
    predict_cmd,
    push_cmd,
    serve_cmd,
    train_cmd,
    ui_cmd,
)
from lmtune.cli.errors import report, set_debug

app = typer.Typer(
    name="lmtune",
    help="Fine-tune language models on your own data: correctly, fast, and offline on a CPU.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_cmd.app, name="data", help="Inspect, convert and split data files.")
app.add_typer(config_cmd.app, name="config", help="Config reference and resolved configs.")
app.add_typer(models_cmd.app, name="models", help="Prepare models (GGUF import).")
app.command("train")(train_cmd.train)
app.command("estimate")(estimate_cmd.estimate)
app.command("chat")(infer_cmd.chat)
app.command("generate")(infer_cmd.generate)
app.command("predict")(predict_cmd.predict)
app.command("eval")(eval_cmd.eval)
app.command("serve")(serve_cmd.serve)
app.command("merge")(merge_cmd.merge)
app.command("export")(export_cmd.export)
app.command("push")(push_cmd.push)
app.command("ui")(ui_cmd.ui)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
    debug: bool = typer.Option(
        False, "--debug", help="On an error, print the full traceback too (or set LMTUNE_DEBUG=1)."
    ),
) -> None:
    set_debug(debug)
    if version:
        from lmtune import __version__

        typer.echo(__version__)
        raise typer.Exit()


def main() -> None:
    """Entry point: a user mistake (LmtuneError, or a library error its input caused) is one red
    sentence and exit code 2; any other error one line and exit code 1; the trace only with --debug
    (lmtune.cli.errors)."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the one place every command's errors are explained
        sys.exit(report(err))


if __name__ == "__main__":
    main()
