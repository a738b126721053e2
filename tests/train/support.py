"""Helpers shared by the training tests."""

from __future__ import annotations

import json
from pathlib import Path


def write_sum_pairs(path: Path, n: int) -> Path:
    """`n` short preference pairs ("What is 3 plus 5?"): the right sum is chosen, a wrong one rejected."""
    rows = [
        {
            "prompt": f"What is {a} plus {a + 2}?",
            "chosen": f"It is {2 * a + 2}.",
            "rejected": f"It is {2 * a + 7}.",
        }
        for a in range(1, n + 1)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
