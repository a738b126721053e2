"""docs/estimate.md's and docs/distributed.md's "Memory by model size" table is the script's output, not typed by hand."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_memory_by_size_table_is_generated():
    spec = importlib.util.spec_from_file_location(
        "estimate_tables", ROOT / "benchmarks" / "estimate_tables.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.table()
    for page in ("estimate.md", "distributed.md"):
        doc = (ROOT / "docs" / page).read_text()
        found = re.search(re.escape(module.START) + r"\n(.*)\n" + re.escape(module.END), doc, re.S)
        assert found, f"docs/{page} lost its memory-by-size markers"
        assert found.group(1) == text, "regenerate: python benchmarks/estimate_tables.py --write"
