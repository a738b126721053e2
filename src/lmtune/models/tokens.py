"""Small token-id helpers shared by model import and generation."""

from __future__ import annotations

from typing import Any


def unique_ids(*values: Any) -> list[int]:
    """Flatten ints / lists / None into a de-duplicated list of ids, keeping the first order.

    Eos ids come from several places (tokenizer, config, generation config), each an int, a list
    or None; generation must stop on any of them.
    """
    out: list[int] = []
    for value in values:
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None and int(item) not in out:
                out.append(int(item))
    return out
