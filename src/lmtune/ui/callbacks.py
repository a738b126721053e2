"""Error handling shared by the tabs: a user mistake is the CLI's one sentence in the page, an
unexpected failure is one line there (the traceback goes to the server's log, never the page)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from lmtune.errors import LmtuneError

log = logging.getLogger("lmtune.ui")


def error_text(err: BaseException) -> str:
    """The sentence `lmtune` prints for the same exception (lmtune.cli.errors.describe: a user mistake,
    or a library error the input caused such as a missing file); anything else is one line here."""
    from lmtune.cli.errors import USER_ERROR, describe

    if isinstance(err, LmtuneError):
        return f"**error:** {err}"
    message, code = describe(err)
    if code == USER_ERROR:
        return f"**error:** {message}"
    log.exception("lmtune ui: unexpected error")
    return f"**error:** unexpected {type(err).__name__}: {err} (details in the terminal running `lmtune ui`)"


def guarded(fn: Callable[..., Any], fallback: Callable[[str], Any]) -> Callable[..., Any]:
    """`fn(*args)`, or `fallback(message)` when it raises."""

    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - every failure becomes a message in the page
            return fallback(error_text(err))

    call.__name__ = getattr(fn, "__name__", "callback")
    return call


def guarded_stream(
    fn: Callable[..., Iterator[Any]], fallback: Callable[[str], Any]
) -> Callable[..., Iterator[Any]]:
    """The same for a streaming callback: what it yielded stays, the error comes last."""

    def call(*args: Any) -> Iterator[Any]:
        try:
            yield from fn(*args)
        except Exception as err:  # noqa: BLE001
            yield fallback(error_text(err))

    call.__name__ = getattr(fn, "__name__", "callback")
    return call
