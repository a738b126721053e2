"""Experiment trackers (`train.report_to`): TensorBoard, Weights & Biases, MLflow, several at once.

We build transformers' own tracker callbacks ourselves instead of passing `report_to` to the
Trainer, for two reasons: they must run *after* our MetricsCallback, which adds tokens/s to the
logged values they forward (the Trainer would put them first), and TensorBoard's event files belong
in the run directory (`RUN/tensorboard/`), not under the checkpoints folder. A last callback logs
lmtune's resolved config to each tracker (TensorBoard text, W&B config, MLflow params), so a run in
any of them can be reproduced from what it shows.

Where W&B and MLflow write is theirs to decide, through their usual environment variables
(`WANDB_MODE=offline`, `WANDB_DIR`, `WANDB_PROJECT`; `MLFLOW_TRACKING_URI`, `MLFLOW_EXPERIMENT_NAME`).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from transformers import TrainerCallback

from lmtune.errors import ConfigError

TRACKERS = ("tensorboard", "wandb", "mlflow")
# The import that proves a tracker is usable, and the extra that installs it.
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_trackers(report_to: list[str]) -> None:
    """A missing tracker package is one sentence naming the extra, before any model loads."""
    for name in report_to:
        if importlib.util.find_spec(_PACKAGE[name]) is None:
            raise ConfigError(
                f"train.report_to: {name} needs the {_PACKAGE[name]} package, which is not installed. "
                f"Install it with `pip install 'lmtune[{name}]'` or remove {name} from train.report_to."
            )


def tracker_callbacks(
    report_to: list[str], *, log_dir: str, run_name: str, config: dict[str, Any]
) -> list[Any]:
    """The callbacks for `report_to`, in order, then the one that logs lmtune's config to them."""
    check_trackers(report_to)
    callbacks: list[Any] = []
    if "tensorboard" in report_to:
        from transformers.integrations import TensorBoardCallback

        tb = TensorBoardCallback()
        tb.logging_dir = log_dir  # read in on_train_begin; the Trainer's default is under output_dir
        callbacks.append(tb)
    if "wandb" in report_to:
        os.environ.setdefault("WANDB_PROJECT", "lmtune")  # the callback's default project is "huggingface"
        callbacks.append(_wandb_callback())
    if "mlflow" in report_to:
        callbacks.append(_mlflow_callback())
    if callbacks:
        callbacks.append(ConfigToTrackers(list(callbacks), run_name=run_name, config=config))
    return callbacks


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-4}} -> {"train.lr": 1e-4}; lists and None as their text."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


class ConfigToTrackers(TrainerCallback):
    """After the trackers have started their runs: lmtune's resolved config into each of them."""

    MLFLOW_BATCH = 100  # MLflow's limit on params per call
    MLFLOW_VALUE = 6000  # and on one value's length

    def __init__(self, trackers: list[Any], *, run_name: str, config: dict[str, Any]):
        self.trackers = trackers
        self.run_name = run_name
        self.config = config

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        import yaml
        from transformers.integrations import MLflowCallback, TensorBoardCallback, WandbCallback

        for cb in self.trackers:
            if isinstance(cb, TensorBoardCallback) and cb.tb_writer is not None:
                text = yaml.safe_dump(self.config, sort_keys=False)
                cb.tb_writer.add_text("lmtune_config", f"```yaml\n{text}```")
                cb.tb_writer.flush()
            elif isinstance(cb, WandbCallback):
                import wandb

                if wandb.run is not None:
                    wandb.run.config.update({"lmtune": self.config}, allow_val_change=True)
            elif isinstance(cb, MLflowCallback):
                import mlflow

                if mlflow.active_run() is not None:
                    flat = {
                        f"lmtune.{k}": str(v)[: self.MLFLOW_VALUE] for k, v in flatten(self.config).items()
                    }
                    items = list(flat.items())
                    for i in range(0, len(items), self.MLFLOW_BATCH):
                        mlflow.log_params(dict(items[i : i + self.MLFLOW_BATCH]))


def _wandb_callback() -> Any:
    """transformers' WandbCallback, plus `close()` (Session.finish): it finishes the W&B run it
    started, after the final evaluation was logged, so the run's files are complete when `lmtune
    train` returns (a notebook or the web UI keeps the process alive)."""
    import wandb
    from transformers.integrations import WandbCallback

    class WandbRun(WandbCallback):
        started = False

        def setup(self, args, state, model, **kwargs):
            before = wandb.run
            super().setup(args, state, model, **kwargs)
            self.started = self.started or (before is None and wandb.run is not None)

        def close(self) -> None:
            if self.started and wandb.run is not None:
                wandb.finish()
            self.started = False

    return WandbRun()


def _mlflow_callback() -> Any:
    """transformers' MLflowCallback, except that its run stays open past on_train_end: lmtune
    evaluates once more after training (the final eval_loss), and MLflow would otherwise start a
    second, stray run for that log. `close()` (Session.finish) ends the run it started."""
    import warnings

    import mlflow
    from transformers.integrations import MLflowCallback

    # MLflow's SQL store uses a SQLAlchemy option deprecated since 2.1: nothing a user can act on.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow\.store")

    class MLflowRun(MLflowCallback):
        started = False

        def setup(self, args, state, model):
            before = mlflow.active_run()
            super().setup(args, state, model)
            self.started = before is None and mlflow.active_run() is not None

        def on_train_end(self, args, state, control, **kwargs):
            pass

        def close(self) -> None:
            if self.started and mlflow.active_run() is not None:
                mlflow.end_run()
                self.started = False

    return MLflowRun()
