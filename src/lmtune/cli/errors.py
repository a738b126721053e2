"""Every `lmtune` command's errors: one line on stderr, the traceback only with `--debug`.

Why in one place and not in each command: a command that forgets a try/except would show a user a
traceback for a bad file. The entry point (`lmtune.cli.app.main`) sends every exception that
escapes a command here, so a mistake the user can fix (`LmtuneError`, or a library error caused by
their input: a missing file, a file that is not UTF-8, a chat template that raises) is one sentence
and exit code 2, and anything else is one line naming the exception (exit code 1) with the way to
get the trace. `lmtune --debug ...` or `LMTUNE_DEBUG=1` prints the full traceback before that line.
(Typer's CliRunner calls `app` directly, so in-process tests still see the exception itself.)
"""

from __future__ import annotations

import os
import sys
import traceback

DEBUG_ENV = "LMTUNE_DEBUG"
USER_ERROR = 2  # something in the input or config; the message says how to fix it
INTERNAL_ERROR = 1  # an unexpected exception: one line, the trace behind --debug


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_debug(on: bool) -> None:
    """`--debug`: kept in the environment so processes the command starts (torchrun ranks) inherit it."""
    if on:
        os.environ[DEBUG_ENV] = "1"


def describe(err: BaseException) -> tuple[str, int]:
    """(one-line message, exit code) for an exception that escaped a command."""
    from lmtune.errors import LmtuneError

    if isinstance(err, LmtuneError):
        return str(err), USER_ERROR
    user = _user_input_error(err)
    if user is not None:
        return user, USER_ERROR
    text = " ".join(str(err).split()) or "(no message)"
    if len(text) > 500:
        text = text[:497] + "..."
    return (
        f"{type(err).__name__}: {text} (an unexpected error; run `lmtune --debug ...` or set "
        f"{DEBUG_ENV}=1 for the full traceback, and report it if your input looks right)",
        INTERNAL_ERROR,
    )


def _user_input_error(err: BaseException) -> str | None:
    """The sentence for library errors that come from what the user gave (files, templates), else None."""
    kinds = {
        FileNotFoundError: "not found",
        FileExistsError: "already exists and is not a folder",
        IsADirectoryError: "is a folder, not a file",
        NotADirectoryError: "a part of this path is a file, not a folder",
        PermissionError: "cannot be accessed (permission denied)",
    }
    what = kinds.get(type(err))
    name = getattr(err, "filename", None)
    if what and name:
        return f"{name}: {what}. Fix: check the path and its permissions."
    if isinstance(err, UnicodeDecodeError):
        return f"a file is not valid UTF-8 ({err.reason} at byte {err.start}). Fix: re-save it as UTF-8."
    if type(err).__name__ == "TemplateError" and type(err).__module__.startswith("jinja2"):
        return (
            f"the chat template raised an error: {err}. Fix: make the conversation fit what the template "
            "expects (e.g. roles alternating user/assistant; no system message for templates without a "
            "system role), or use a fallback template (data.template: chatml or alpaca)."
        )
    return None


def report(err: BaseException) -> int:
    """Print `err` as one line (after its traceback under --debug); return the exit code."""
    from rich.console import Console

    from lmtune.distributed.env import is_main_process

    message, code = describe(err)
    if not is_main_process():  # every launched process stops on the same mistake: rank 0 says it
        return code
    if debug_enabled():
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return code
