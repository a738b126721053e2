"""The eval report (Markdown / HTML) built from a hand-made eval document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmtune.eval.compare import compare
from lmtune.eval.report import build_blocks, render_html, render_markdown, write_report

TARGET_ANSWERS = ["Paris | France\nis the answer", "<script>alert(1)</script>", "4"]
BASELINE_ANSWERS = ["London", "no idea", "5"]


def model_result(name: str, metrics: dict[str, Any], answers: list[str], exact: list[bool]) -> dict[str, Any]:
    predictions = [
        {"prediction": a, "tokens": len(a.split()), "scores": {"exact_match": e}}
        for a, e in zip(answers, exact)
    ]
    return {"target": name, "metrics": metrics, "predictions": predictions}


def make_doc(*, baseline: bool = True, run_dir: Path | None = None) -> dict[str, Any]:
    """Shaped like lmtune.eval.runner.assemble_doc's output."""
    target = model_result(
        "runs/tuned",
        {"loss": 1.5, "exact_match": 0.5, "generated_tokens": 12},
        TARGET_ANSWERS,
        [True, False, False],
    )
    if run_dir is not None:
        target["run_dir"] = str(run_dir)
    doc: dict[str, Any] = {
        "name": "demo",
        "created": "2024-05-01 12:00:00",
        "options": {
            "metrics": ["auto"],
            "generation": {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0, "seed": 0},
            "batch_size": 8,
        },
        "data": {
            "path": "data/dev.jsonl",
            "kind": "chat",
            "format": "openai",
            "records": 3,
            "total": 5,
            "rejects": 2,
            "labels": None,
        },
        "items": [
            {
                "source": "dev.jsonl#1",
                "prompt": [{"role": "user", "content": "Capital of France?"}],
                "reference": "Paris",
            },
            {"source": "dev.jsonl#2", "prompt": [{"role": "user", "content": "Say hi"}], "reference": "Hi"},
            {"source": "dev.jsonl#4", "prompt": [{"role": "user", "content": "2+2?"}], "reference": "4"},
        ],
        "target": target,
    }
    if baseline:
        doc["baseline"] = model_result(
            "base-model",
            {"loss": 2.0, "exact_match": 0.75, "generated_tokens": 10},
            BASELINE_ANSWERS,
            [False, False, True],
        )
        doc["comparison"] = compare(doc["target"], doc["baseline"])
    return doc


def table_after(blocks: list[tuple[str, Any]], heading: tuple[str, str]) -> tuple[list[str], list[list[str]]]:
    """The table block that follows `heading`."""
    k = blocks.index(heading)
    kind, value = blocks[k + 1]
    assert kind == "table"
    return value


# ------------------------------------------------------------------------------------------ metrics


def test_metric_table_with_baseline_has_deltas_and_better_worse(tmp_path: Path):
    blocks = build_blocks(make_doc(), tmp_path)
    header, rows = table_after(blocks, ("h2", "Metrics"))
    assert header == ["metric", "target", "baseline", "delta"]
    assert rows == [
        ["loss ↓", "1.5000", "2.0000", "-0.5000 (better)"],  # 1.5 - 2.0, lower loss is better
        ["exact_match ↑", "0.5000", "0.7500", "-0.2500 (worse)"],  # 0.5 - 0.75
        ["generated_tokens", "12", "10", "+2 (better)"],  # ints stay ints
    ]
    md = render_markdown(blocks)
    assert "| loss ↓ | 1.5000 | 2.0000 | -0.5000 (better) |" in md
    # record 1: exact_match yes vs no (win), record 2: no vs no (tie), record 3: no vs yes (loss)
    assert "Per record, the target is better on 1, worse on 1, tied on 1." in md


def test_metric_table_without_baseline_has_one_value_column(tmp_path: Path):
    blocks = build_blocks(make_doc(baseline=False), tmp_path)
    header, rows = table_after(blocks, ("h2", "Metrics"))
    assert header == ["metric", "value"]
    assert rows == [["loss ↓", "1.5000"], ["exact_match ↑", "0.5000"], ["generated_tokens", "12"]]


def test_summary_paragraph_names_models_data_rejects_and_generation(tmp_path: Path):
    doc = make_doc()
    md = render_markdown(build_blocks(doc, tmp_path))
    assert md.startswith("# Evaluation: demo\n")
    assert (
        "**runs/tuned** vs baseline **base-model** on `data/dev.jsonl` (openai, 3 records scored, "
        "2 rejected: see demo_rejects.jsonl). Generation: greedy, max_new_tokens 64, seed 0. "
        "2024-05-01 12:00:00." in md
    )
    doc["options"]["generation"].update(temperature=0.7, top_p=0.9)
    md = render_markdown(build_blocks(doc, tmp_path))
    assert "Generation: temperature 0.7, top_p 0.9, max_new_tokens 64, seed 0." in md


# ------------------------------------------------------------------------------------------ examples


def test_markdown_escapes_pipes_and_newlines_in_cells(tmp_path: Path):
    doc = make_doc(baseline=False)
    doc["target"]["predictions"][2]["prediction"] = "four\r\nor 4\rok"
    md = render_markdown(build_blocks(doc, tmp_path))
    assert "| 1 | Capital of France? | Paris | Paris \\| France is the answer |" in md
    assert "| 3 | 2+2? | 4 | four or 4 ok |" in md
    assert "\r" not in md
    # every table line of the examples is one whole row: it starts and ends with a cell border
    examples = md.split("## Example generations\n\n")[1].split("\n\n")[0].split("\n")
    assert len(examples) == 2 + 3  # header, separator, one line per record
    assert all(line.startswith("|") and line.endswith("|") for line in examples)


def test_html_escapes_generated_text(tmp_path: Path):
    html = render_html(build_blocks(make_doc(), tmp_path), "demo <1>")
    assert "<script>" not in html
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>" in html
    assert "<title>demo &lt;1&gt;</title>" in html
    assert "<b>runs/tuned</b> vs baseline <b>base-model</b> on <code>data/dev.jsonl</code>" in html


def test_wins_and_losses_only_with_a_baseline(tmp_path: Path):
    blocks = build_blocks(make_doc(), tmp_path)
    assert table_after(blocks, ("h2", "Biggest wins (target vs baseline)")) == (
        ["#", "prompt", "reference", "target", "baseline", "decided by"],
        [["1", "Capital of France?", "Paris", TARGET_ANSWERS[0], "London", "exact_match +1.0000"]],
    )
    assert table_after(blocks, ("h2", "Biggest losses (target vs baseline)")) == (
        ["#", "prompt", "reference", "target", "baseline", "decided by"],
        [["3", "2+2?", "4", "4", "5", "exact_match -1.0000"]],
    )
    header, rows = table_after(blocks, ("h2", "Example generations"))
    assert header == ["#", "prompt", "reference", "target", "baseline"]
    assert [r[3:] for r in rows] == [list(pair) for pair in zip(TARGET_ANSWERS, BASELINE_ANSWERS)]

    alone = render_markdown(build_blocks(make_doc(baseline=False), tmp_path))
    assert "Biggest" not in alone and "Per record" not in alone
    assert "| # | prompt | reference | target |\n" in alone


# ------------------------------------------------------------------------------------------ confusion


def test_confusion_matrix_tables(tmp_path: Path):
    doc = make_doc()
    doc["target"]["classification"] = {"labels": ["neg", "pos"], "confusion": [[3, 1], [2, 4]]}
    doc["baseline"]["classification"] = {"labels": ["neg", "pos"], "confusion": [[0, 4], [0, 6]]}
    blocks = build_blocks(doc, tmp_path)
    assert table_after(blocks, ("h3", "Confusion matrix (target; rows true, columns predicted)")) == (
        ["true / predicted", "neg", "pos"],
        [["neg", "3", "1"], ["pos", "2", "4"]],
    )
    md = render_markdown(blocks)
    assert "| true / predicted | neg | pos |\n|---|---|---|\n| neg | 0 | 4 |\n| pos | 0 | 6 |" in md
    assert "### Confusion matrix (baseline; rows true, columns predicted)" in md
    assert "Confusion" not in render_markdown(build_blocks(make_doc(), tmp_path))


# ------------------------------------------------------------------------------------------ files


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "eval_loss": 1.7}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return run


def test_write_report_with_run_dir_draws_the_curves(tmp_path: Path, run_dir: Path):
    out = tmp_path / "eval"
    out.mkdir()
    written = write_report(make_doc(run_dir=run_dir), out, formats=("md", "html"))
    png = out / "demo_curves.png"
    assert written == [png, out / "demo.md", out / "demo.html"]
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    md = (out / "demo.md").read_text(encoding="utf-8")
    assert "## Training curves\n\n![demo_curves.png](demo_curves.png)" in md
    assert "<img src='demo_curves.png'" in (out / "demo.html").read_text(encoding="utf-8")


def test_write_report_without_run_dir_has_no_curves(tmp_path: Path):
    (tmp_path / "demo_curves.png").write_bytes(b"stale")  # left by an earlier report: not this one's
    written = write_report(make_doc(), tmp_path)
    assert written == [tmp_path / "demo.md"]
    md = (tmp_path / "demo.md").read_text(encoding="utf-8")
    assert "curves" not in md and "Training curves" not in md
    assert (tmp_path / "demo_curves.png").read_bytes() == b"stale"


def test_run_dir_without_metrics_file_draws_nothing(tmp_path: Path):
    empty_run = tmp_path / "run"
    empty_run.mkdir()
    assert write_report(make_doc(run_dir=empty_run), tmp_path) == [tmp_path / "demo.md"]
    assert not (tmp_path / "demo_curves.png").exists()
