"""A full disk: refused before training when the estimate says the checkpoints will not fit; a disk
that fills up during a save stops the run with one line and keeps the last complete checkpoint,
from which --resume continues."""

from __future__ import annotations

import errno
import sys

import pytest
import torch
import yaml
from transformers import Trainer

from lmtune.cli.app import main
from lmtune.config.loader import validate_config
from lmtune.errors import StorageError
from lmtune.run.layout import RunDir, checkpoint_problem
from lmtune.train import checkpoints
from lmtune.train.checkpoints import checkpoint_count, space_needed
from lmtune.train.runner import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_config(model_dir, data, out, **train_opts) -> dict:
    return {
        "model": {"name": str(model_dir)},
        "data": {"path": str(data)},
        "method": {"name": "lora", "r": 8},
        "train": {
            "max_steps": 8,
            "save_steps": 3,
            "batch_size": 4,
            "log_steps": 1,
            "bf16": False,
            **train_opts,
        },
        "output": {"dir": str(out)},
    }


def test_space_estimate_counts_weights_and_adam_moments():
    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 5, bias=False))
    model[0].requires_grad_(False)  # 110 frozen float32 values, 50 trained
    # adapter-style save: 3 checkpoints x (50 x 4 weight bytes + 50 x 8 moment bytes) + final 200 bytes
    assert space_needed(model, whole_model=False, checkpoints=3) == 3 * (200 + 400) + 200
    # full save: every weight (160 x 4 bytes) in each checkpoint and at the end
    assert space_needed(model, whole_model=True, checkpoints=3) == 3 * (640 + 400) + 640
    assert checkpoint_count(save_steps=3, keep=2, max_steps=8) == 3  # 2 kept + the one being written
    assert checkpoint_count(save_steps=0, keep=2, max_steps=8) == 1  # the Ctrl-C one


def test_too_little_free_space_stops_before_training(tiny_model_dir, sums_file, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "free_bytes", lambda path: 100_000)
    out = tmp_path / "run"
    with pytest.raises(
        StorageError, match=r"not enough free space for .*: 0\.1 MiB free, but 3 checkpoint\(s\)"
    ):
        train(validate_config(run_config(tiny_model_dir, sums_file, out)))
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()  # nothing trained


def test_disk_full_during_a_save_keeps_the_last_checkpoint(
    tiny_model_dir, sums_file, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(tiny_model_dir, sums_file, out)))
    real_save = Trainer._save_rng_state

    def disk_full_at_step_6(self, output_dir):  # after the weights and optimizer state were written
        if self.state.global_step == 6:
            raise OSError(errno.ENOSPC, "No space left on device", f"{output_dir}/rng_state.pth")
        return real_save(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", disk_full_at_step_6)
    monkeypatch.setattr(sys, "argv", ["lmtune", "train", str(config)])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    printed = capsys.readouterr().err
    assert "Traceback" not in printed, printed
    err = printed.strip().splitlines()[-1]  # the last line; the lines before are the loading report
    assert [line for line in printed.splitlines() if line.startswith("error:")] == [err]
    assert err.startswith("error: saving checkpoint-6 in ") and "the disk is full. Training stopped;" in err
    assert f"the last complete checkpoint, {out / 'checkpoints' / 'checkpoint-3'}, is kept" in err
    assert err.endswith(f"Resume with: lmtune train {config} --resume")
    run = RunDir(out)
    assert [p.name for p in run.checkpoint_dirs()] == ["checkpoint-3"]
    assert checkpoint_problem(out / "checkpoints" / "checkpoint-3") is None
    assert not (
        out / "checkpoints" / ".incomplete" / "checkpoint-6"
    ).exists()  # the half-written save is gone
    assert not (out / "lmtune_run.json").exists()

    monkeypatch.setattr(Trainer, "_save_rng_state", real_save)  # space freed
    result = train(validate_config(run_config(tiny_model_dir, sums_file, out)), resume=True)
    assert result.summary["steps"] == 8
    assert [p.name for p in run.checkpoint_dirs()] == ["checkpoint-6", "checkpoint-8"]


def test_commit_seals_a_staged_checkpoint_and_replaces_one_of_the_same_step(tmp_path):
    from lmtune.train.checkpoints import commit_checkpoint

    staged = tmp_path / "checkpoints" / ".incomplete" / "checkpoint-4"
    (staged / "sub").mkdir(parents=True)
    (staged / "optimizer.pt").write_bytes(b"o" * 100)
    (staged / "sub" / "shard.distcp").write_bytes(b"s" * 7)
    final = tmp_path / "checkpoints" / "checkpoint-4"
    final.mkdir()
    (final / "stale.bin").write_bytes(b"x")  # an older save of the same step: replaced whole
    commit_checkpoint(staged, final, step=4)
    assert not staged.exists() and not (final / "stale.bin").exists()
    marker = yaml.safe_load((final / "lmtune_checkpoint.json").read_text())
    assert marker == {"step": 4, "files": {"optimizer.pt": 100, "sub/shard.distcp": 7}}
    assert checkpoint_problem(final) is None
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [".incomplete", "checkpoint-4"]
