"""The families table: docs/models.md carries it verbatim, `lmtune models list` prints it without
importing torch, and every row names modules the family's tiny model really has."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from lmtune.cli.app import app
from lmtune.models import families as fam

DOCS = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def test_docs_carry_the_table():
    text = DOCS.read_text()
    block = text.split("<!-- families:start -->\n", 1)[1].split("<!-- families:end -->", 1)[0]
    assert block == fam.support_markdown(), (
        "docs/models.md is out of date: paste `lmtune models list --markdown` between its families markers"
    )


def test_every_family_has_a_row_in_every_table():
    assert set(fam.VERIFIED) == set(fam.FAMILIES) == set(fam.TEMPLATE_QUIRKS)
    for name, family in fam.FAMILIES.items():
        assert set(fam.VERIFIED[name]) == set(fam.COLUMNS), name
        assert family.model_type in fam.LORA_TARGETS and family.model_type in fam.IA3_TARGETS, name
    for targets, feedforward in fam.IA3_TARGETS.values():
        assert set(feedforward) <= set(targets)


def test_unknown_architecture_keeps_peft_all_linear():
    assert fam.lora_targets("bert") == "all-linear" and fam.ia3_targets("bert") is None
    assert fam.lora_targets("phi3") == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def test_models_list_is_fast_and_complete():
    code = (
        "import sys; from lmtune.cli.app import app\n"
        "try: app(['models', 'list', '--json'])\n"
        "except SystemExit: pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules), file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "[]"  # no heavy import on this path
    rows = json.loads(out.stdout)
    assert [r["family"] for r in rows] == [f.display for f in fam.FAMILIES.values()]
    mixtral = next(r for r in rows if r["model_type"] == "mixtral")
    assert mixtral["onnx"] == "refused" and mixtral["lora_targets"] == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    ]


def test_models_list_table_and_markdown():
    table = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    for family in fam.FAMILIES.values():
        assert family.display in table.output
    markdown = CliRunner().invoke(app, ["models", "list", "--markdown"])
    assert markdown.output == fam.support_markdown()
