"""`lmtune predict`: valid probabilities, the same numbers as the trained model in memory (one
record at a time, so no padding), metrics from the true labels, unlabelled files, and the clear
errors for the wrong kind of run (and chat/generate on a classification run)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.classification_helpers import cls_config, save_tiny_bert, sentiment_rows, write_jsonl
from typer.testing import CliRunner

from lmtune.cli.app import app
from lmtune.errors import ConfigError
from lmtune.eval.classification import classification_report
from lmtune.train.runner import train

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict_data")
    rows = sentiment_rows(40, seed=3)
    unlabelled = [{"review": r["text"]} for r in rows[32:]]
    return (
        write_jsonl(folder / "train.jsonl", rows[:32]),
        write_jsonl(folder / "held_out.jsonl", rows[32:]),
        write_jsonl(folder / "unlabelled.jsonl", unlabelled),
    )


@pytest.fixture(scope="module", params=["bert-lora", "llama-prompt"])
def run(request, files, tmp_path_factory):
    """A trained run and its in-memory model (BERT + LoRA; a left-padded decoder + prompt tuning)."""
    if request.param == "bert-lora":
        model_dir = save_tiny_bert(tmp_path_factory.mktemp("bert"))
        method = {"name": "lora", "r": 4}
    else:
        model_dir = request.getfixturevalue("tiny_model_dir")
        method = {"name": "prompt", "num_virtual_tokens": 4}
    cfg = cls_config(model_dir, files[0], None, tmp_path_factory.mktemp(request.param), method)
    return train(cfg)


def in_memory_probabilities(result, texts: list[str]) -> np.ndarray:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(result.run_dir)
    result.model.eval()
    with torch.no_grad():
        logits = [result.model(**tokenizer([t], return_tensors="pt")).logits[0] for t in texts]
    return torch.softmax(torch.stack(logits).double(), -1).numpy()


def test_predictions_match_the_trained_model(run, files, tmp_path):
    out = tmp_path / "preds.jsonl"
    res = runner.invoke(
        app, ["predict", str(run.run_dir), "--data", str(files[1]), "--out", str(out), "-b", "3"]
    )
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    source = [json.loads(x) for x in files[1].read_text().splitlines()]
    assert [r["text"] for r in rows] == [s["text"] for s in source]  # file order, all records
    assert [r["source"] for r in rows] == [f"held_out.jsonl#{i}" for i in range(1, len(source) + 1)]
    assert [r["true_label"] for r in rows] == [s["label"] for s in source]
    probs = np.array([[r["probabilities"][x] for x in ("neg", "pos")] for r in rows])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert [r["label"] for r in rows] == [("neg", "pos")[i] for i in probs.argmax(axis=1)]
    expected = in_memory_probabilities(run, [s["text"] for s in source])
    assert np.allclose(probs, expected, atol=1e-5), np.abs(probs - expected).max()
    report = classification_report(
        [("neg", "pos").index(r["true_label"]) for r in rows], list(probs.argmax(axis=1)), ["neg", "pos"]
    )
    assert f"accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f} on 8 labelled" in res.output


def test_unlabelled_file_and_default_output(run, files):
    res = runner.invoke(app, ["predict", str(run.run_dir), "--data", str(files[2])])
    assert res.exit_code == 0, res.output
    out = run.run_dir / "predictions" / "unlabelled.jsonl"
    assert f"Wrote 8 predictions to {out}" in res.output.replace("\n", "")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 8 and not any("true_label" in r for r in rows)
    assert "accuracy" not in res.output
    texts = [json.loads(x)["review"] for x in files[2].read_text().splitlines()]
    probs = np.array([[r["probabilities"]["neg"], r["probabilities"]["pos"]] for r in rows])
    assert np.allclose(probs, in_memory_probabilities(run, texts), atol=1e-5)


def test_column_option(run, files, tmp_path):
    res = runner.invoke(
        app,
        [
            "predict",
            str(run.run_dir),
            "--data",
            str(files[2]),
            "-c",
            "text=review",
            "-o",
            str(tmp_path / "p.jsonl"),
        ],
    )
    assert res.exit_code == 0, res.output
    bad = runner.invoke(app, ["predict", str(run.run_dir), "--data", str(files[2]), "-c", "review"])
    assert isinstance(bad.exception, ConfigError) and "FIELD=COLUMN" in str(bad.exception)


def test_chat_and_generate_refuse_a_classification_run(run):
    for args in (["chat", str(run.run_dir)], ["generate", str(run.run_dir), "-p", "hi"]):
        res = runner.invoke(app, args)
        assert isinstance(res.exception, ConfigError), res.output
        assert "classification run" in str(res.exception) and "lmtune predict" in str(res.exception)


def test_predict_needs_a_classification_run(tmp_path, files):
    res = runner.invoke(app, ["predict", str(tmp_path), "--data", str(files[1])])
    assert isinstance(res.exception, ConfigError) and "not a run directory" in str(res.exception)
    (tmp_path / "lmtune_run.json").write_text(json.dumps({"task": "sft", "method": "lora"}))
    res = runner.invoke(app, ["predict", str(tmp_path), "--data", str(files[1])])
    assert isinstance(res.exception, ConfigError) and "task: sft run" in str(res.exception)


def test_predict_has_help():
    res = runner.invoke(app, ["predict", "--help"])
    assert res.exit_code == 0 and "--data" in res.output and "--batch-size" in res.output
