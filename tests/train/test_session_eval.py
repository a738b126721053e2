"""`eval:` in a training config: the same evaluation as `lmtune eval`, before and after training,
compared in the run summary and written as a full report into RUN/eval/."""

from __future__ import annotations

import json

import pytest
from tests.classification_helpers import write_jsonl

from lmtune.config.loader import validate_config
from lmtune.errors import ConfigError
from lmtune.eval.evaluate import EvalOptions
from lmtune.eval.runner import EvalRequest, run_eval
from lmtune.infer.generate import GenerationOptions
from lmtune.train.runner import train

HELD_OUT = [
    {"prompt": f"What is {a} plus {b}?", "reference": f"{a} plus {b} is {a + b}."}
    for a, b in ((2, 3), (7, 1))
]


@pytest.fixture(scope="module")
def run(tiny_model_dir, sums_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("session_eval")
    checks = write_jsonl(folder / "held_out.jsonl", HELD_OUT)
    cfg = validate_config(
        {
            "model": {"name": str(tiny_model_dir)},
            "data": {"path": str(sums_file), "val_size": 0},
            "method": {"name": "lora", "r": 8},
            "train": {"max_steps": 25, "lr": 1e-2, "batch_size": 4, "bf16": False},
            "eval": {"path": str(checks), "max_new_tokens": 10},
            "output": {"dir": str(folder / "run")},
        }
    )
    return train(cfg), checks


def test_before_and_after_in_the_summary(run):
    result, _ = run
    doc = result.summary["eval"]
    before, after = doc["baseline"]["metrics"], doc["target"]["metrics"]
    assert set(after) >= {"loss", "perplexity", "exact_match", "bleu", "rougeL", "tokens_per_second"}
    assert after["loss"] < before["loss"] - 0.5  # 25 steps on the same kind of sums
    assert doc["comparison"]["metrics"]["loss"]["better"] == "target"
    md = (result.run_dir / "summary.md").read_text()
    assert "## Eval prompts" in md and "| loss |" in md and "What is 2 plus 3?" in md


def test_full_report_in_the_run_directory(run):
    result, _ = run
    written = json.loads((result.run_dir / "eval" / "held_out.json").read_text())
    assert written["target"]["metrics"] == result.summary["eval"]["target"]["metrics"]
    assert (result.run_dir / "eval" / "held_out.md").is_file()


def test_after_numbers_equal_lmtune_eval_of_the_saved_run(run):
    """The "after" column is what `lmtune eval RUN` reports for the run directory it saved."""
    result, checks = run
    outside = run_eval(
        EvalRequest(
            str(result.run_dir),
            str(checks),
            options=EvalOptions(generation=GenerationOptions(max_new_tokens=10, seed=0)),
            out_dir=str(result.run_dir / "eval_again"),
        )
    ).doc["target"]
    inside = result.summary["eval"]["target"]
    assert [p["prediction"] for p in outside["predictions"]] == [
        p["prediction"] for p in inside["predictions"]
    ]
    assert outside["metrics"]["loss"] == pytest.approx(inside["metrics"]["loss"], rel=1e-4)


def test_unknown_eval_metric_is_a_config_error(tiny_model_dir, sums_file):
    with pytest.raises(ConfigError, match="unknown metric"):
        validate_config(
            {
                "model": {"name": str(tiny_model_dir)},
                "data": {"path": str(sums_file)},
                "eval": {"path": "x.jsonl", "metrics": ["blue"]},
            }
        )
