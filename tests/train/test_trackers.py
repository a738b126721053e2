"""train.report_to with the real trackers, offline: one tiny run reports to TensorBoard, W&B
(offline mode) and MLflow (SQLite store) at once, and each is read back with its own reader and
compared with the run's metrics.jsonl: loss, learning rate, tokens/s, eval loss, and lmtune's config."""

from __future__ import annotations

import importlib.util
import json
import random

import pytest
from tests.train.wandb_log import history_and_config

from lmtune.config.loader import validate_config
from lmtune.errors import ConfigError
from lmtune.train.runner import train
from lmtune.train.trackers import check_trackers, flatten

LR = 5e-3


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("trackers")
    rnd = random.Random(0)
    data = tmp / "train.jsonl"
    with data.open("w") as f:
        for _ in range(24):
            a, b = rnd.randint(1, 9), rnd.randint(1, 9)
            msgs = [
                {"role": "user", "content": f"What is {a} plus {b}?"},
                {"role": "assistant", "content": f"{a + b}."},
            ]
            f.write(json.dumps({"messages": msgs}) + "\n")
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp),
        "WANDB_SILENT": "true",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "MLFLOW_EXPERIMENT_NAME": "lmtune-tests",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        cfg = validate_config(
            {
                "model": {"name": str(tiny_model_dir)},
                "data": {"path": str(data), "val_size": 4},
                "method": {"name": "lora", "r": 8},
                "train": {
                    "max_steps": 6,
                    "lr": LR,
                    "batch_size": 4,
                    "log_steps": 2,
                    "eval_steps": 3,
                    "bf16": False,
                    "report_to": "tensorboard,wandb,mlflow",
                },  # fmt: skip
                "output": {"dir": str(tmp / "run")},
            }
        )
        result = train(cfg)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return result.run_dir, tmp, rows, env


def logged(rows, key):
    return {r["step"]: r[key] for r in rows if r.get(key) is not None}


def test_tensorboard_event_files_hold_the_metrics_and_config(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _, rows, _ = tracked_run
    events = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}
    ).Reload()
    tags = {
        "loss": "train/loss",
        "learning_rate": "train/learning_rate",
        "tokens_per_s": "train/tokens_per_s",
    }
    tags["eval_loss"] = "eval/loss"
    for key, tag in tags.items():
        expected = logged(rows, key)
        assert expected, key
        seen = {e.step: e.value for e in events.Scalars(tag)}
        assert seen.keys() == expected.keys(), tag
        assert seen == pytest.approx(expected, rel=1e-6), tag  # event files keep float32
    text = events.Tensors("lmtune_config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f"lr: {LR}" in text and "report_to:" in text


def test_wandb_offline_run_holds_the_history_and_config(tracked_run):
    _, tmp, rows, _ = tracked_run
    (run_file,) = tmp.glob("wandb/offline-run-*/run-*.wandb")
    history, config = history_and_config(run_file)
    for key, wkey in (("loss", "train/loss"), ("learning_rate", "train/learning_rate"),
                      ("tokens_per_s", "train/tokens_per_s"), ("eval_loss", "eval/loss")):  # fmt: skip
        seen = {h["train/global_step"]: h[wkey] for h in history if wkey in h}
        assert seen == pytest.approx(logged(rows, key), rel=1e-9), key
    assert config["lmtune"]["train"]["lr"] == LR
    assert config["lmtune"]["train"]["report_to"] == ["tensorboard", "wandb", "mlflow"]


def test_mlflow_sqlite_store_holds_one_finished_run_with_metrics_and_params(tracked_run):
    from mlflow.tracking import MlflowClient

    run_dir, _, rows, env = tracked_run
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(env["MLFLOW_EXPERIMENT_NAME"])
    (run,) = client.search_runs([experiment.experiment_id])  # the final evaluation makes no second run
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    for key in ("loss", "learning_rate", "tokens_per_s", "eval_loss"):
        seen = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert seen == pytest.approx(logged(rows, key), rel=1e-9), key
    params = run.data.params
    resolved = flatten(validate_config(json.loads(json.dumps(_config_of(run_dir)))).model_dump(mode="json"))
    assert float(params["lmtune.train.lr"]) == LR
    assert params["lmtune.model.name"] == resolved["model.name"]
    assert sum(k.startswith("lmtune.") for k in params) == len(resolved)


def _config_of(run_dir):
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_report_to_accepts_a_name_a_list_a_comma_list_and_none(tiny_model_dir):
    base = {"model": {"name": str(tiny_model_dir)}, "data": {"path": "x.jsonl"}}
    for given, want in (("none", []), ("tensorboard", ["tensorboard"]), ("wandb, mlflow", ["wandb", "mlflow"]),
                        (["mlflow", "mlflow"], ["mlflow"]), ([], [])):  # fmt: skip
        assert validate_config({**base, "train": {"report_to": given}}).train.report_to == want
    with pytest.raises(ConfigError, match="report_to"):
        validate_config({**base, "train": {"report_to": "comet"}})


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb", "mlflow"])
def test_a_missing_tracker_names_its_extra(tracker, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == tracker else real(name, *a)
    )
    with pytest.raises(ConfigError) as err:
        check_trackers(["tensorboard", "wandb", "mlflow"])
    assert f"pip install 'lmtune[{tracker}]'" in str(err.value) and "\n" not in str(err.value)
