"""Run directory rules: never mix a new run into an old one by accident."""

from __future__ import annotations

import pytest

from lmtune.errors import ConfigError
from lmtune.run.layout import MARKER, prepare_run_dir


def test_new_directory_is_created(tmp_path):
    run = prepare_run_dir(tmp_path / "runs" / "a", overwrite=False, resume=False)
    assert run.root.is_dir() and run.config.name == "config.yaml" and run.latest_checkpoint() is None


def test_finished_run_is_protected_unless_overwrite(tmp_path):
    root = tmp_path / "done"
    root.mkdir()
    (root / MARKER).write_text("{}")
    (root / "adapter_model.safetensors").write_text("x")
    with pytest.raises(ConfigError, match="already exists"):
        prepare_run_dir(root, overwrite=False, resume=False)
    run = prepare_run_dir(root, overwrite=True, resume=False)
    assert list(run.root.iterdir()) == []


def test_attempt_that_stopped_before_training_is_reused(tmp_path):
    root = tmp_path / "failed"
    root.mkdir()
    for name in ("config.yaml", "data_stats.json", "rejects.jsonl"):
        (root / name).write_text("x")
    assert prepare_run_dir(root, overwrite=False, resume=False).root == root
    (root / "notes.txt").write_text("the user's own file")  # anything else: protected again
    with pytest.raises(ConfigError, match="already exists"):
        prepare_run_dir(root, overwrite=False, resume=False)


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint found"):
        prepare_run_dir(tmp_path / "r", overwrite=False, resume=True)
    for step in (5, 10, 15):
        (tmp_path / "r" / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    run = prepare_run_dir(tmp_path / "r", overwrite=False, resume=True)
    assert run.latest_checkpoint().name == "checkpoint-15"  # numeric, not lexical, order
