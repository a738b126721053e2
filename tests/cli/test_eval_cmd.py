"""`lmtune eval` from the command line: options reach the evaluation, files are written, and user
mistakes are one sentence with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.classification_helpers import write_jsonl
from typer.testing import CliRunner

from lmtune.cli.app import app
from lmtune.cli.eval_cmd import parse_normalize
from lmtune.errors import ConfigError

runner = CliRunner()
ROWS = [{"prompt": "Say hi", "reference": "Hi!"}, {"prompt": "Name a colour", "reference": "Blue."}]


def test_eval_with_baseline_writes_json_and_html(tiny_model_dir, tiny_qwen2_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "out"
    args = ["eval", str(tiny_model_dir), "--data", str(data), "--baseline", str(tiny_qwen2_dir),
            "--metrics", "exact_match,rouge", "--report", "html", "--out", str(out), "--name", "cmp",
            "--max-new-tokens", "6", "--stop", "\n", "--normalize", "none"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Per record: target better on" in result.output
    doc = json.loads((out / "cmp.json").read_text())
    assert set(doc["target"]["metrics"]) == {"exact_match", "rouge1", "rouge2", "rougeL"}
    assert doc["options"]["generation"]["max_new_tokens"] == 6 and doc["options"]["generation"]["stop"] == [
        "\n"
    ]
    assert doc["options"]["normalize"] == {
        "lower": False,
        "punctuation": False,
        "articles": False,
        "whitespace": False,
    }
    assert all("\n" not in p["prediction"] for p in doc["target"]["predictions"])
    assert (out / "cmp.html").read_text().startswith("<!doctype html>")


def test_normalize_option():
    assert parse_normalize("lower, articles") == {
        "lower": True,
        "punctuation": False,
        "articles": True,
        "whitespace": False,
    }
    with pytest.raises(ConfigError, match="unknown option"):
        parse_normalize("lower,stem")


def test_bad_report_format(tiny_model_dir, tmp_path):
    result = runner.invoke(app, ["eval", str(tiny_model_dir), "--data", "x.jsonl", "--report", "pdf"])
    assert isinstance(result.exception, ConfigError) and "--report" in str(result.exception)


def test_bad_data_file_is_one_sentence(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "reference": "b"}\n{"prompt": 1\n')
    proc = subprocess.run(
        [sys.executable, "-m", "lmtune.cli.app", "eval", str(tiny_model_dir), "--data", str(bad)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "bad.jsonl" in proc.stderr and "line 2" in proc.stderr and "Traceback" not in proc.stderr


def test_lm_eval_tasks_are_run_on_the_loaded_target(tiny_model_dir, tmp_path):
    """--lm-eval reaches the bridge with the loaded model; its numbers land in the JSON (the bridge's
    own numbers are checked against log-probs in tests/eval/test_lm_eval_bridge.py)."""
    from lmtune.eval.lm_eval_bridge import run_lm_eval
    from lmtune.run.load import load_target

    task = str(Path(__file__).resolve().parents[2] / "examples" / "lm_eval" / "sst2_local.yaml")
    args = ["eval", str(tiny_model_dir), "--lm-eval", task, "--lm-eval-limit", "6", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    got = json.loads((tmp_path / "lm_eval.json").read_text())["lm_eval"]["target"]["sst2_local"]
    loaded = load_target(str(tiny_model_dir), quiet=True)
    assert got == run_lm_eval(loaded.model, loaded.tokenizer, [task], limit=6)["sst2_local"]
