"""User-facing errors.

Anything the user can fix (a bad file, a bad config key, a missing package) raises a subclass of
`LmtuneError`. The CLI prints its message as a sentence and exits with code 2, never a traceback.
"""

from __future__ import annotations


class LmtuneError(Exception):
    """A mistake the user can fix; `str(err)` is the whole explanation, hint included."""


class ConfigError(LmtuneError):
    """The YAML config or a `--set` override is invalid."""


class ModelError(LmtuneError):
    """A model reference cannot be resolved or loaded."""


class StorageError(LmtuneError):
    """The disk cannot take what the run writes (full, read-only, no permission)."""


class DataError(LmtuneError):
    """A data file cannot be read or a record is invalid (with on_error: fail)."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        record: int | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ):
        self.file, self.record, self.line, self.field, self.hint = file, record, line, field, hint
        self.reason = message
        where = []
        if file:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if record is not None:
            where.append(f"record {record}")
        if field:
            where.append(f"field '{field}'")
        text = (", ".join(where) + ": " if where else "") + message
        if hint:
            text += f" Fix: {hint}"
        super().__init__(text)
