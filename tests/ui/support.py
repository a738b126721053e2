"""Helpers shared by the UI tests and their fixtures."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
CHROMIUM_HELP = (
    "the browser tests need Debian's chromium and the playwright package: `apt-get install -y chromium` "
    "(as root) and `pip install -e '.[test]'`, or run `make install`; set LMTUNE_CHROMIUM to a Chromium "
    "binary elsewhere"
)


def chromium_path() -> str:
    found = os.environ.get("LMTUNE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail(f"no chromium found: {CHROMIUM_HELP}", pytrace=False)
    return found


def write_sums(path: Path) -> Path:
    """16 one-turn conversations ("What is 3 plus 5?" -> "3 plus 5 is 8.")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for a in range(1, 9):
            for b in (2, 5):
                row = [{"role": "user", "content": f"What is {a} plus {b}?"}]
                row.append({"role": "assistant", "content": f"{a} plus {b} is {a + b}."})
                f.write(json.dumps({"messages": row}) + "\n")
    return path
