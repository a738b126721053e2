"""Run directory rules: never mix a new run into an old one by accident."""

from __future__ import annotations

import json

import pytest

from lmtune.errors import ConfigError
from lmtune.run.layout import (
    CHECKPOINT_MARKER,
    MARKER,
    RunDir,
    checkpoint_problem,
    prepare_run_dir,
    rotate_checkpoints,
    write_json,
)


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


def complete_checkpoint(root, step: int, files: dict[str, bytes] | None = None):
    """A checkpoint folder as train/checkpoints.py commits it: its files, then the marker listing them."""
    path = root / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    files = files or {
        "adapter_model.safetensors": b"w" * 40,
        "optimizer.pt": b"o" * 80,
        "trainer_state.json": b"{}",
    }
    for name, data in files.items():
        (path / name).write_bytes(data)
    (path / CHECKPOINT_MARKER).write_text(
        json.dumps({"step": step, "files": {n: len(d) for n, d in files.items()}})
    )
    return path


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="no complete checkpoint found"):
        prepare_run_dir(tmp_path / "r", overwrite=False, resume=True)
    for step in (5, 10, 15):
        complete_checkpoint(tmp_path / "r", step)
    run = prepare_run_dir(tmp_path / "r", overwrite=False, resume=True)
    assert run.latest_checkpoint().name == "checkpoint-15"  # numeric, not lexical, order


def test_resume_passes_over_incomplete_checkpoints_with_a_line_each(tmp_path):
    root = tmp_path / "r"
    good = complete_checkpoint(root, 10)
    cut = complete_checkpoint(root, 20)
    (cut / "optimizer.pt").write_bytes(b"o" * 30)  # cut off: 30 of the 80 bytes the marker lists
    gone = complete_checkpoint(root, 30)
    (gone / "optimizer.pt").unlink()
    unmarked = complete_checkpoint(root, 40)
    (unmarked / CHECKPOINT_MARKER).unlink()  # killed before the save finished
    garbled = complete_checkpoint(root, 50)
    (garbled / CHECKPOINT_MARKER).write_text('{"step": 50, "fil')
    lines: list[str] = []
    assert RunDir(root).latest_checkpoint(report=lines.append) == good
    assert lines == [
        f"Skipping {garbled}: its {CHECKPOINT_MARKER} is unreadable; it is not used for --resume.",
        f"Skipping {unmarked}: it has no {CHECKPOINT_MARKER} (the save did not finish); it is not used for --resume.",
        f"Skipping {gone}: optimizer.pt is missing; it is not used for --resume.",
        f"Skipping {cut}: optimizer.pt is 30 bytes, 80 were written (the file was cut off); it is not used for --resume.",
    ]
    assert checkpoint_problem(good) is None


def test_resume_with_only_incomplete_checkpoints_names_them(tmp_path):
    (tmp_path / "r" / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (tmp_path / "r" / "checkpoints" / ".incomplete" / "checkpoint-10").mkdir(parents=True)  # staging: ignored
    with pytest.raises(ConfigError, match=r"no complete checkpoint found .*\(checkpoint-5: incomplete"):
        prepare_run_dir(tmp_path / "r", overwrite=False, resume=True)


def test_rotation_keeps_the_newest_complete_checkpoint(tmp_path):
    root = tmp_path / "r"
    for step in (5, 10):
        complete_checkpoint(root, step)
    (root / "checkpoints" / "checkpoint-15").mkdir()  # incomplete (left by an older lmtune)
    (root / "checkpoints" / "checkpoint-20").mkdir()
    rotate_checkpoints(RunDir(root), keep=2)
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == [
        "checkpoint-10",
        "checkpoint-15",
        "checkpoint-20",
    ]
    complete_checkpoint(root, 25)
    rotate_checkpoints(RunDir(root), keep=2)
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["checkpoint-20", "checkpoint-25"]


def test_unwritable_output_directory_is_a_sentence_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"output directory .*a_file/run is not writable \(Not a directory"):
        prepare_run_dir(blocker / "run", overwrite=False, resume=False)


def test_unwritable_output_directory_read_only_filesystem(tmp_path):
    """/proc refuses new files even to root (the tests may run as root, where chmod does not bite)."""
    with pytest.raises(ConfigError, match="output directory /proc/lmtune-run is not writable"):
        prepare_run_dir("/proc/lmtune-run", overwrite=False, resume=False)


def test_write_json_replaces_whole(tmp_path):
    path = tmp_path / "x.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2} and [p.name for p in tmp_path.iterdir()] == ["x.json"]
