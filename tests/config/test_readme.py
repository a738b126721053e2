"""The README's config reference is the generated one, so docs cannot drift from the schema."""

from __future__ import annotations

import re
from pathlib import Path

from lmtune.config.reference import config_reference

README = Path(__file__).resolve().parents[2] / "README.md"


def embedded_reference() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- BEGIN CONFIG REFERENCE[^>]*-->\n(.*?)<!-- END CONFIG REFERENCE -->", text, re.S)
    assert match, "README lost its config reference markers"
    return match.group(1)


def test_readme_reference_matches_schema():
    # To refresh: python -c "from lmtune.config.reference import config_reference as c; print(c(title=False, level=4))"
    assert embedded_reference().strip() == config_reference(title=False, level=4).strip()
