"""The README's quickstart, end to end (about 1.5 minutes on 2 cores): `pytest -m slow`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.realmodel
def test_quickstart_teaches_the_new_identity(tmp_path):
    out = tmp_path / "quickstart"
    proc = subprocess.run(
        [sys.executable, "-m", "lmtune.cli.app", "train", str(ROOT / "examples" / "quickstart.yaml"),
         "--set", f"output.dir={out}"],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Eval prompts: base vs tuned" in proc.stdout and "exact_match" in proc.stdout
    doc = json.loads((out / "summary.json").read_text())["eval"]
    before, after = doc["baseline"]["metrics"], doc["target"]["metrics"]
    assert before["exact_match"] < 0.3 and after["exact_match"] >= 0.85  # the quality the README shows
    assert after["contains"] >= 0.7  # names Quill and Larkspur Labs on most held-out questions
    assert after["loss"] < before["loss"]  # the reference answers became more likely
    assert doc["comparison"]["records"]["wins"] > doc["comparison"]["records"]["losses"]
    answers = {
        i["prompt"][-1]["content"]: p["prediction"]
        for i, p in zip(doc["items"], doc["target"]["predictions"])
    }
    assert "Paris" in answers["What is the capital of France?"]  # still answers unrelated questions
    assert (out / "eval" / "identity_eval.md").is_file()  # the full before/after report
