"""Checkpoints that are complete or absent, a clean stop on Ctrl-C, and disk space checked up front.

Why: a run takes hours and `--resume` trusts the newest checkpoint. The Trainer writes
`checkpoint-N` in place, file after file, so a crash (SIGKILL, power loss, a full disk) in the
middle of a save leaves a folder that has the right name but lacks the optimizer state or holds a
cut-off file; resuming from it fails or, worse, silently restarts the optimizer.

Here the Trainer writes each checkpoint into `checkpoints/.incomplete/checkpoint-N` (the Trainer's
own `_get_output_dir` hook is pointed there for the duration of the save), every file is flushed to
disk, a completion marker listing each file and its size is written last, and only then is the
folder renamed to `checkpoints/checkpoint-N` (a rename within one filesystem is atomic). `--resume`
(`RunDir.latest_checkpoint`) takes the newest folder whose marker matches its files.

A full disk or an unwritable folder during a save stops training with one sentence naming the last
complete checkpoint; Ctrl-C finishes the current step, saves a checkpoint and stops
(`TrainingInterrupted`, which the CLI turns into the resume command).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import threading
from functools import cache
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from lmtune.errors import StorageError
from lmtune.run.layout import (
    CHECKPOINT_MARKER,
    STAGING,
    RunDir,
    checkpoint_step,
    rotate_checkpoints,
    write_json,
)


class TrainingInterrupted(Exception):
    """Ctrl-C stopped training after saving `checkpoint` at `step` (not a user mistake: exit 130)."""

    def __init__(self, step: int, checkpoint: Path | None):
        self.step, self.checkpoint = step, checkpoint
        where = f"checkpoint saved: {checkpoint}" if checkpoint else "no checkpoint could be saved"
        super().__init__(f"Training stopped at step {step} by Ctrl-C; {where}")


# ----------------------------------------------------------------------------- atomic saving


class AtomicCheckpoints:
    """Mixin for a `transformers.Trainer` (or TRL) class: checkpoints appear complete or not at all."""

    _lmtune_staging: str | None = None

    def _get_output_dir(self, trial: Any) -> str:  # the Trainer's hook for where checkpoints go
        if self._lmtune_staging is not None:
            return self._lmtune_staging
        return super()._get_output_dir(trial)  # type: ignore[misc]

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        root = Path(self.args.output_dir)  # type: ignore[attr-defined]
        staging = root / STAGING
        name = f"checkpoint-{self.state.global_step}"  # type: ignore[attr-defined]
        main = self.args.should_save  # type: ignore[attr-defined]
        wait = self.accelerator.wait_for_everyone  # type: ignore[attr-defined]
        try:
            if main:
                shutil.rmtree(staging / name, ignore_errors=True)  # a save a crash left half-written
                staging.mkdir(parents=True, exist_ok=True)
            wait()
            self._lmtune_staging = str(staging)
            try:
                super()._save_checkpoint(model, trial)  # type: ignore[misc]
            finally:
                self._lmtune_staging = None
            wait()  # every rank's shards are written before rank 0 seals the folder
            if main:
                commit_checkpoint(staging / name, root / name, step=self.state.global_step)  # type: ignore[attr-defined]
                _remove_if_empty(staging)
                rotate_checkpoints(RunDir(root.parent), keep=self.args.save_total_limit)  # type: ignore[attr-defined]
            wait()
        except OSError as err:
            if main:
                shutil.rmtree(staging / name, ignore_errors=True)
            raise save_error(err, RunDir(root.parent), name) from err


@cache
def atomic(trainer_class: type) -> type:
    """`trainer_class` with atomic checkpoints (LMTrainer has them built in)."""
    if issubclass(trainer_class, AtomicCheckpoints):
        return trainer_class
    return type(trainer_class.__name__, (AtomicCheckpoints, trainer_class), {"__module__": __name__})


def commit_checkpoint(staged: Path, final: Path, *, step: int) -> None:
    """Flush every file, write the completion marker last, then rename the folder into place."""
    files: dict[str, int] = {}
    for path in sorted(p for p in staged.rglob("*") if p.is_file()):
        _fsync(path)
        files[path.relative_to(staged).as_posix()] = path.stat().st_size
    marker = staged / CHECKPOINT_MARKER
    write_json(marker, {"step": step, "files": files})
    _fsync(marker)
    _fsync(staged)
    old = None
    if final.exists():  # the same step saved again (a resumed run passing it): replace it whole
        old = final.with_name(f".replaced-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(staged, final)
    _fsync(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (another rank's leftovers) or already gone: harmless
        folder.rmdir()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:  # some filesystems refuse fsync on folders; the rename still orders writes
        if err.errno not in (errno.EINVAL, errno.EBADF) or path.is_file():
            raise
    finally:
        os.close(fd)


STORAGE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def save_error(err: OSError, run: RunDir, name: str, where: Path | None = None) -> StorageError:
    """One sentence: what failed, why, the last complete checkpoint kept, and what to do."""
    why = STORAGE_ERRNOS.get(err.errno or 0, err.strerror or str(err))
    last = run.latest_checkpoint()
    kept = (
        f"the last complete checkpoint, {last}, is kept, so after fixing this `--resume` continues from "
        f"step {checkpoint_step(last)}"
        if last
        else "no complete checkpoint exists yet"
    )
    fix = (
        "free space (or set output.dir on a larger disk)"
        if err.errno in (errno.ENOSPC, errno.EDQUOT)
        else ("make the folder writable (or set output.dir elsewhere)")
    )
    where = where or run.checkpoints
    error = StorageError(f"saving {name} in {where} failed: {why}. Training stopped; {kept}. Fix: {fix}.")
    error.resumable = last is not None  # type: ignore[attr-defined]  (the CLI adds the resume command)
    return error


# ----------------------------------------------------------------------------- disk space


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def param_bytes(model: Any) -> tuple[int, int]:
    """(all parameters, trainable parameters) in bytes, as stored (tied weights once)."""
    total = trainable = 0
    for p in model.parameters():
        n = p.numel() * p.element_size()
        total += n
        if p.requires_grad:
            trainable += n
    return total, trainable


def space_needed(model: Any, *, whole_model: bool, checkpoints: int) -> int:
    """Bytes the run writes: `checkpoints` checkpoints (trained weights + two AdamW float32 moments per
    trained value) plus the final weights. `whole_model`: the method saves every weight (full, freeze)."""
    total, trainable = param_bytes(model)
    trained_values = sum(p.numel() for p in model.parameters() if p.requires_grad)
    weights = total if whole_model else trainable
    return checkpoints * (weights + 8 * trained_values) + weights


def checkpoint_count(save_steps: int, keep: int | None, max_steps: int) -> int:
    """How many checkpoints are on disk at once: the kept ones plus the one being written (a save
    completes before the oldest is deleted); without save_steps, the one Ctrl-C saves."""
    if not save_steps:
        return 1
    if keep:
        return keep + 1
    return max(1, max_steps // save_steps) if max_steps > 0 else 2


def check_space(model: Any, run: RunDir, *, whole_model: bool, checkpoints: int) -> int:
    """Stop before training when the disk cannot hold the checkpoints and the final weights."""
    need = space_needed(model, whole_model=whole_model, checkpoints=checkpoints)
    free = free_bytes(run.root)
    if free < need:
        raise StorageError(
            f"not enough free space for {run.root}: {_mb(free)} free, but {checkpoints} checkpoint(s) and "
            f"the final weights need about {_mb(need)} (estimated from the parameter sizes). Fix: free "
            "space, set output.dir on a larger disk, or lower train.save_total_limit."
        )
    return need


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


# ----------------------------------------------------------------------------- Ctrl-C


class StopOnInterrupt(TrainerCallback):
    """First Ctrl-C: finish the step, save a checkpoint, stop. A second one stops at once."""

    def __init__(self, console: Any):
        self.console = console
        self.requested = False
        self._previous: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            self.restore()
            raise KeyboardInterrupt
        self.requested = True
        self.console.print(
            "[yellow]Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again stops at once, "
            "without saving)[/]"
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
