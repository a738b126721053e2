"""Bad input through the real `lmtune` entry point: one line, a non-zero exit, the trace behind --debug.

The commands run through `lmtune.cli.app.main` (what the `lmtune` script calls) in this process,
so stderr is exactly what a user sees; one test starts the real script in a subprocess. Which
broken files go through which command is listed in tests/data/broken/manifest.json ("cli").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmtune.cli.app import main

BROKEN = Path(__file__).resolve().parents[1] / "data" / "broken"
ENTRIES: list[dict[str, Any]] = json.loads((BROKEN / "manifest.json").read_text())["entries"]
GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


def lmtune(monkeypatch, capsys, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `lmtune ARGS` through its entry point; (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["lmtune", *args])
    monkeypatch.setenv("COLUMNS", "10000")  # one logical line stays one physical line
    monkeypatch.setenv("LMTUNE_DEBUG", "0")  # off, and restored after the test (--debug sets it to 1)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as done:
        main()
    out = capsys.readouterr()
    code = done.value.code
    return (0 if code is None else int(code)), out.out, out.err


def one_line_error(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def _materialize(entry: dict[str, Any], tmp_path: Path) -> Path:
    if not entry.get("generated"):
        return BROKEN / entry["file"]
    from tests.data.test_broken_corpus import _generate

    return _generate(entry["file"], tmp_path)


def _cli(kind: str) -> list[dict[str, Any]]:
    return [e for e in ENTRIES if kind in e.get("cli", ())]


@pytest.mark.parametrize("entry", _cli("convert"), ids=lambda e: e["file"])
def test_data_convert(entry, tmp_path, monkeypatch, capsys):
    path = _materialize(entry, tmp_path)
    out = tmp_path / "out" / "canonical.jsonl"
    code, stdout, err = lmtune(monkeypatch, capsys, "data", "convert", str(path), str(out))
    if entry["expect"] == "error":
        line = one_line_error(err)
        assert code == 2 and path.name in line and "Fix:" in line
        for needle in entry["error"]:
            assert needle in line, (needle, line)
        return
    assert code == 0 and not err, err
    assert len(out.read_text().splitlines()) == entry["loaded"]
    skipped = sum(entry["reasons"].values())
    reasons = ", ".join(f"{n} {r}" for r, n in entry["reasons"].items())
    assert f"{skipped} of {entry['loaded'] + skipped} records skipped: {reasons}" in stdout
    rejects = out.with_name("canonical.rejects.jsonl")
    rows = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [r["reason"] for r in rows] == [r for r, n in entry["reasons"].items() for _ in range(n)]
    assert all(Path(r["file"]).name == path.name and r["line"] and " Fix: " in r["message"] for r in rows)


def _train_config(tmp_path: Path, data: Path, model: str, **extra: Any) -> Path:
    cfg = {
        "model": {"name": model},
        "data": {"path": str(data), "cache": False},
        "train": {"max_steps": 1, "batch_size": 2, "log_steps": 1},
        "output": {"dir": str(tmp_path / "run")},
    }
    for section, values in extra.items():
        cfg.setdefault(section, {}).update(values)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fails the test if anything loads model weights or a tokenizer."""
    calls: list[str] = []

    def refuse(*args: Any, **kw: Any) -> Any:
        calls.append("load")
        raise AssertionError("a model was loaded before the input was checked")

    import lmtune.models.load as load
    from lmtune.train.session import Session

    for name in ("load_causal_lm", "load_tokenizer"):
        monkeypatch.setattr(load, name, refuse)
    for name in ("load_model", "load_tokenizer", "model_ref"):
        monkeypatch.setattr(Session, name, refuse)
    return calls


@pytest.mark.parametrize(
    "entry", [e for e in _cli("train") if e["expect"] == "error"], ids=lambda e: e["file"]
)
def test_train_stops_on_bad_data_before_any_model(entry, tmp_path, monkeypatch, capsys, no_model_loads):
    path = _materialize(entry, tmp_path)
    cfg = _train_config(tmp_path, path, str(tmp_path / "no" / "such" / "model"))
    code, _, err = lmtune(monkeypatch, capsys, "train", str(cfg))
    line = one_line_error(err)
    assert code == 2 and path.name in line and "Fix:" in line, line
    for needle in entry["error"]:
        assert needle in line, (needle, line)
    assert not no_model_loads


def test_train_skips_bad_records_and_writes_them(
    tmp_path, monkeypatch, capsys, tiny_model_dir, one_torch_thread
):
    """A real (1-step) training run on a file with one bad line: counted, reported, in rejects.jsonl."""
    [entry] = [e for e in _cli("train") if e["expect"] == "skip"]
    path = _materialize(entry, tmp_path)
    cfg = _train_config(tmp_path, path, str(tiny_model_dir))
    code, stdout, err = lmtune(monkeypatch, capsys, "train", str(cfg))
    assert code == 0, err
    usable = entry["loaded"]
    assert f"{usable} of {usable + 1} records usable" in stdout
    rows = [json.loads(x) for x in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["reason"], r["line"], Path(r["file"]).name) for r in rows] == [("invalid_json", 2, path.name)]


@pytest.mark.parametrize("entry", _cli("inspect"), ids=lambda e: e["file"])
def test_data_inspect(entry, tmp_path, monkeypatch, capsys, tiny_model_dir):
    path = _materialize(entry, tmp_path)
    code, _, err = lmtune(monkeypatch, capsys, "data", "inspect", str(path), "--model", str(tiny_model_dir))
    line = one_line_error(err)
    assert code == 2 and path.name in line and "Fix:" in line
    for needle in entry["error"]:
        assert needle in line, (needle, line)


def test_file_system_mistakes_are_one_line(tmp_path, monkeypatch, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text((json.dumps(GOOD) + "\n") * 3)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    code, _, err = lmtune(monkeypatch, capsys, "data", "split", str(good), str(a_file), "--val", "1")
    line = one_line_error(err)
    assert code == 2 and str(a_file) in line and "already exists and is not a folder" in line

    code, _, err = lmtune(monkeypatch, capsys, "data", "convert", str(good), str(a_file / "out.jsonl"))
    line = one_line_error(err)
    assert code == 2 and str(a_file) in line and "Fix:" in line


def test_unexpected_errors_are_one_line_and_debug_shows_the_trace(tmp_path, monkeypatch, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(GOOD) + "\n")

    def broken_loader(*args: Any, **kw: Any) -> Any:
        return {}["a bug, not the user's input"]

    monkeypatch.setattr("lmtune.data.load.load_conversations", broken_loader)
    args = ("data", "convert", str(good), str(tmp_path / "out.jsonl"))
    code, _, err = lmtune(monkeypatch, capsys, *args)
    line = one_line_error(err)
    assert code == 1 and "KeyError" in line and "--debug" in line and "LMTUNE_DEBUG=1" in line

    code, _, err = lmtune(monkeypatch, capsys, "--debug", *args)
    assert code == 1 and "Traceback (most recent call last)" in err and "broken_loader" in err
    assert err.strip().splitlines()[-1].startswith("error: KeyError")

    code, _, err = lmtune(monkeypatch, capsys, *args, env={"LMTUNE_DEBUG": "1"})
    assert code == 1 and "Traceback" in err and "broken_loader" in err


def test_the_installed_script_debug_flag(tmp_path):
    """The real process: one line and exit 2 for a bad file; --debug puts the trace before that line."""
    bad = BROKEN / "trailing_comma_array.json"
    args = [sys.executable, "-m", "lmtune.cli.app"]
    cmd = ["data", "convert", str(bad), str(tmp_path / "out.jsonl")]
    env = {k: v for k, v in __import__("os").environ.items() if k != "LMTUNE_DEBUG"}
    env["COLUMNS"] = "10000"
    plain = subprocess.run([*args, *cmd], capture_output=True, text=True, timeout=120, env=env)
    assert plain.returncode == 2
    line = one_line_error(plain.stderr)
    assert "trailing_comma_array.json, line 4: invalid JSON" in line
    debug = subprocess.run([*args, "--debug", *cmd], capture_output=True, text=True, timeout=120, env=env)
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
    assert "lmtune/data/readers.py" in debug.stderr and debug.stderr.strip().splitlines()[-1] == line
