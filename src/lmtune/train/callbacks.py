"""Trainer callbacks: the progress bar the user watches and the metrics file the run keeps.

Preference runs also keep TRL's reward accuracy/margin and chosen/rejected log-probs per row.

Tokens/s counts real (non-padding) input tokens: the Trainer is asked to track them with
`include_num_input_tokens_seen="non_padding"`, and the rate is taken between log steps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

# What TRL's preference trainers log besides the loss (task: preference), on training and eval rows.
PREFERENCE_KEYS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
                   "logps/chosen", "logps/rejected")  # fmt: skip
LOGGED_KEYS = ("loss", "learning_rate", "grad_norm", "eval_loss", *PREFERENCE_KEYS,
               *(f"eval_{k}" for k in PREFERENCE_KEYS))  # fmt: skip
# The ones the printed line shows, with their short names.
_SHORT = {"rewards/accuracies": "reward_acc", "rewards/margins": "margin"}


class MetricsCallback(TrainerCallback):
    """Writes one JSON line per log event to metrics.jsonl and prints a compact line."""

    def __init__(self, path: Path, console: Any):
        self.path = path
        self.console = console
        self.history: list[dict[str, Any]] = []
        self._last_time = time.perf_counter()
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen
        if state.global_step and self.path.is_file():
            self._resume_history(state.global_step)

    def _resume_history(self, step: int) -> None:
        """Under --resume: the rows up to the checkpoint's step are the run's history; rows a killed
        run logged after it are dropped (those steps are trained again), so the curve has each step once."""
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut off by the kill
                continue
            if isinstance(row, dict) and row.get("step", 0) <= step:
                rows.append(row)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(self.path)
        self.history = rows

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == state.max_steps:
            control.should_log = True  # the final loss is always logged, whatever log_steps is

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        now = time.perf_counter()
        row: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        for key in LOGGED_KEYS:
            if key in logs:
                row[key] = logs[key]
        if "loss" in logs and args.include_num_input_tokens_seen != "no":
            tokens = state.num_input_tokens_seen
            dt = now - self._last_time
            row["tokens_per_s"] = round((tokens - self._last_tokens) / dt, 1) if dt > 0 else None
            if row["tokens_per_s"] is not None:
                logs["tokens_per_s"] = row["tokens_per_s"]  # the tracker callbacks come after this one
            row["tokens_seen"] = tokens
            self._last_time, self._last_tokens = now, tokens
        if len(row) <= 2:  # end-of-training summary logs carry none of the keys above
            return
        if self.history and {**self.history[-1], "epoch": row["epoch"]} == row:
            return  # the final evaluate() repeats the last scheduled evaluation
        self.history.append(row)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        parts = [f"step {row['step']}/{state.max_steps}" if state.max_steps else "before training"]
        if "loss" in row:
            parts.append(f"loss {row['loss']:.4f}")
            parts.append(f"lr {row.get('learning_rate', 0):.2e}")
            if row.get("tokens_per_s") is not None:
                parts.append(f"{row['tokens_per_s']:.0f} tok/s")
        if "eval_loss" in row:
            parts.append(f"eval_loss {row['eval_loss']:.4f}")
        for prefix in ("", "eval_"):
            for key, short in _SHORT.items():
                if prefix + key in row:
                    parts.append(f"{prefix}{short} {row[prefix + key]:.3f}")
        self.console.print("  " + "  ".join(parts), highlight=False)


class ProgressCallback(TrainerCallback):
    """A rich progress bar with loss, learning rate, tokens/s and ETA."""

    def __init__(self, console: Any):
        self.console = console
        self.progress = None
        self.task = None
        self._start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=state.max_steps, completed=state.global_step, status=""
        )
        self._start = time.perf_counter()
        self._start_tokens = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self._start
        rate = (state.num_input_tokens_seen - self._start_tokens) / elapsed if elapsed > 0 else 0.0
        last = next((h for h in reversed(state.log_history) if "loss" in h), None)
        status = f"{rate:.0f} tok/s" if args.include_num_input_tokens_seen != "no" else ""
        if last:
            status = f"loss {last['loss']:.4f}  lr {last.get('learning_rate', 0):.2e}  " + status
        self.progress.update(self.task, completed=state.global_step, status=status)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
