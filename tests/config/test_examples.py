"""Every shipped example config validates, and every file it names exists (a renamed data file
would otherwise break the docs' commands only when a user runs them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmtune.config.loader import load_config

# Training configs; examples/lm_eval/ holds lm-evaluation-harness task files (tests/eval/test_lm_eval_bridge.py).
EXAMPLES = sorted(
    p
    for p in (Path(__file__).resolve().parents[2] / "examples").rglob("*.yaml")
    if p.parent.name != "lm_eval"
)


def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"quickstart.yaml", "pretrain.yaml", "sst2_minilm.yaml", "stage1.yaml", "stage2.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_is_valid_and_its_files_exist(path):
    cfg = load_config(path)
    files = [cfg.data.path, cfg.data.val_path, cfg.eval.path, *(d.path for d in cfg.data.datasets)]
    for f in filter(None, files):
        assert Path(f).is_file(), f"{path.name} names {f}, which does not exist"
