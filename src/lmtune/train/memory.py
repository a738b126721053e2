"""Moved to `lmtune.plan.memory`; re-exported here so existing imports keep working."""

from lmtune.plan.memory import (  # noqa: F401
    available_memory,
    format_bytes,
    parse_memory,
    resident_memory,
)
