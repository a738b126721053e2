"""The `lmtune` command: help everywhere, fast start-up, user mistakes as sentences, data verbs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from lmtune.cli.app import app
from lmtune.tokenize.masking import tokenize_conversation

runner = CliRunner()

COMMANDS = [
    [],
    ["train"],
    ["chat"],
    ["generate"],
    ["data"],
    ["data", "inspect"],
    ["data", "convert"],
    ["data", "split"],
    ["config"],
    ["config", "schema"],
    ["config", "show"],
    ["models"],
    ["models", "import-gguf"],
    ["estimate"],
    ["eval"],
    ["merge"],
    ["export"],
    ["push"],
    ["serve"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_every_command_has_help(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and "--help" in result.output


def test_cli_import_does_not_load_heavy_libraries():
    # `lmtune --help` is fast because nothing heavy is imported until a command runs.
    code = "import sys, lmtune.cli.app; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "lmtune.cli.app", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_user_mistakes_are_sentences_not_tracebacks(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"path": "x.jsonl"}, "train": {"learning_rate": 1e-4}}))
    out = run_cli("train", str(cfg))
    assert out.returncode == 2
    assert "Did you mean 'train.lr'?" in out.stderr and "Traceback" not in out.stderr

    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]')
    out = run_cli("data", "convert", str(bad), str(tmp_path / "out.jsonl"))
    assert out.returncode == 2
    assert "bad.json" in out.stderr and "line 2" in out.stderr and "Traceback" not in out.stderr

    out = run_cli("generate", "./no/such/model", "--prompt", "hi")
    assert out.returncode == 2 and "A model can be" in out.stderr and "Traceback" not in out.stderr


def test_config_schema_and_show(tmp_path):
    result = runner.invoke(app, ["config", "schema"])
    assert result.exit_code == 0 and "`train.lr`" in result.output and "`data.train_on`" in result.output
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"path": "d.jsonl"}}))
    result = runner.invoke(app, ["config", "show", str(cfg), "--set", "train.max_steps=7"])
    assert result.exit_code == 0
    shown = yaml.safe_load(result.output)
    assert shown["train"]["max_steps"] == 7 and shown["method"]["r"] == 16


def test_inspect_json_shows_exactly_what_the_trainer_sees(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    data = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]}
        for i in range(4)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"messages": []}\n')
    result = runner.invoke(
        app, ["data", "inspect", str(data), "--model", str(tiny_model_dir), "--json", "--records", "2"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["format"] == "openai" and report["records"] == 5 and report["usable"] == 4
    assert sum(report["rejected_by_reason"].values()) == 1
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(report["samples"]) == 2
    for row, sample in zip(rows, report["samples"]):
        expected = tokenize_conversation(tok, row["messages"])
        assert sample["input_ids"] == expected.input_ids and sample["labels"] == expected.labels
        assert -100 in sample["labels"]


def test_inspect_highlights_an_example(tmp_path, tiny_model_dir, shared_data):
    result = runner.invoke(
        app,
        [
            "data",
            "inspect",
            str(shared_data / "dolly_15k" / "databricks-dolly-15k.head34.jsonl"),
            "--model",
            str(tiny_model_dir),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    # record 26's context alone is longer than max_length 1024: rejected, not trained on nothing
    assert "dolly" in result.output and "34 read, 33 usable, 1 rejected" in result.output
    assert "no_trained_tokens" in result.output and "record 26" in result.output
    assert "Example 1" in result.output and "When did Virgin Australia start operating?" in result.output


def test_convert_and_split_write_canonical_records(tmp_path, shared_data):
    out = tmp_path / "alpaca.jsonl"
    result = runner.invoke(
        app, ["data", "convert", str(shared_data / "alpaca_en_stanford" / "alpaca_tiny.json"), str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 100
    assert lines[0]["messages"][0] == {"role": "user", "content": "Give three tips for staying healthy."}
    assert lines[0]["messages"][1]["role"] == "assistant"

    result = runner.invoke(
        app, ["data", "split", str(out), str(tmp_path / "split"), "--val", "0.1", "--test", "5"]
    )
    assert result.exit_code == 0, result.output
    counts = {
        n: len((tmp_path / "split" / f"{n}.jsonl").read_text().splitlines()) for n in ("train", "val", "test")
    }
    assert counts == {"train": 85, "val": 10, "test": 5}
    seen = set()
    for n in counts:
        for x in (tmp_path / "split" / f"{n}.jsonl").read_text().splitlines():
            seen.add(json.loads(x)["messages"][0]["content"] + json.loads(x)["messages"][1]["content"])
    assert len(seen) == 100  # a partition: nothing lost, nothing duplicated


def test_generate_from_a_model_folder(tiny_model_dir):
    result = runner.invoke(
        app, ["generate", str(tiny_model_dir), "-p", "Hello", "-p", "Bye", "--max-new-tokens", "4"]
    )
    assert result.exit_code == 0, result.output
    assert "> Hello" in result.output and "> Bye" in result.output
