"""The UI's callbacks as plain Python calls (no browser, no server)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from tests.ui.support import write_sums

from lmtune.errors import ConfigError, LmtuneError


@pytest.fixture(scope="module")
def root(tiny_model_dir, tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("ui_unit")
    shutil.copytree(tiny_model_dir, r / "models" / "tiny")
    write_sums(r / "data" / "sums.jsonl")
    return r


# ---------------------------------------------------------------- paths
def test_paths_outside_the_working_directory_are_refused(root, tmp_path):
    from lmtune.ui.paths import confined

    assert confined("data/sums.jsonl", root) == (root / "data" / "sums.jsonl").resolve()
    outside = tmp_path / "secret.jsonl"
    outside.write_text("{}\n")
    (root / "link.jsonl").symlink_to(outside)
    for bad in (str(outside), "../" + outside.name, "link.jsonl", "/etc/passwd"):
        with pytest.raises(ConfigError, match="outside the working directory"):
            confined(bad, root)
    with pytest.raises(ConfigError, match="no such data file"):
        confined("data/missing.jsonl", root, what="data file")


def test_data_file_picker_lists_only_data_files_inside(root):
    from lmtune.ui.paths import list_data_files

    (root / ".git").mkdir(exist_ok=True)
    (root / ".git" / "x.jsonl").write_text("")
    files = list_data_files(root)
    assert "data/sums.jsonl" in files
    assert not any(f.startswith(".git") for f in files)
    assert all(not Path(f).is_absolute() for f in files)


# ---------------------------------------------------------------- train form
def _reference_keys() -> list[str]:
    """Every key the config reference documents (independent walk: the docs' own tables)."""
    from lmtune.config.reference import config_reference

    keys = re.findall(r"^\| `([^`]+)` \|", config_reference(), flags=re.M)
    return [k for k in keys if "[]" not in k]


def test_train_form_has_one_field_per_config_key():
    from lmtune.ui.train_form import form_fields

    assert [f.key for f in form_fields()] == _reference_keys()


def _values(overrides: dict) -> list:
    from lmtune.ui.train_form import form_fields

    specs = form_fields()
    return specs, [overrides.get(s.key, s.form_default) for s in specs]


def test_form_becomes_the_config_the_cli_reads(root):
    from lmtune.config.loader import load_config
    from lmtune.ui.train_form import form_to_raw, to_yaml, validated

    specs, values = _values(
        {"model.name": "models/tiny", "data.path": "data/sums.jsonl", "train.max_steps": 7,
         "train.lr": 0.001, "method.r": 4, "data.packing": "false", "method.target_modules": "[q_proj, v_proj]",
         "output.name": "unit"}
    )  # fmt: skip
    raw = form_to_raw(specs, values, root=root, runs_dir="runs")
    # Only what differs from the defaults, file paths absolute, the run under the runs folder.
    assert raw == {
        "model": {"name": "models/tiny"},
        "data": {"path": str(root / "data" / "sums.jsonl"), "packing": False},
        "method": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
        "train": {"max_steps": 7, "lr": 0.001},
        "output": {"name": "unit", "dir": "runs/unit"},
    }
    cfg = validated(raw)
    path = root / "unit.yaml"
    path.write_text(to_yaml(raw))
    again = load_config(path)  # what `lmtune train unit.yaml` reads
    assert again.model_dump() == cfg.model_dump()
    assert again.train.max_steps == 7 and again.method.target_modules == ["q_proj", "v_proj"]


def test_form_mistakes_get_the_cli_message(root):
    from lmtune.ui.train_form import form_to_raw, validated

    specs, values = _values({"train.max_steps": "ten"})
    with pytest.raises(ConfigError, match=r"train.max_steps: expected a number, got 'ten'"):
        form_to_raw(specs, values, root=root, runs_dir="runs")
    specs, values = _values({"train.batch_size": 0})
    with pytest.raises(ConfigError, match="train.batch_size"):
        validated(form_to_raw(specs, values, root=root, runs_dir="runs"))
    specs, values = _values({"method.r": 8, "method.name": "full"})  # an option full does not read
    with pytest.raises(ConfigError, match="method.r"):
        validated(form_to_raw(specs, values, root=root, runs_dir="runs"))


def test_method_options_shown_only_for_their_methods():
    from lmtune.ui.train_form import form_fields, method_visible

    by_key = {f.key: f for f in form_fields()}
    assert method_visible(by_key["method.r"], "lora") and not method_visible(by_key["method.r"], "full")
    assert method_visible(by_key["method.trainable_layers"], "freeze")
    assert method_visible(by_key["train.lr"], "full")


# ---------------------------------------------------------------- render
def test_highlighting_escapes_and_marks_runs():
    from lmtune.ui.render import highlighted

    out = highlighted([("<b>ask</b> ", False), ("answer & done", True)])
    assert '<span class="lt-context"' in out and "&lt;b&gt;ask&lt;/b&gt;" in out
    assert re.search(r'class="lt-trained"[^>]*>answer &amp; done</span>', out)


def test_loss_curve_draws_every_logged_loss():
    from lmtune.ui.render import loss_svg

    rows = [{"step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 6)] + [{"step": 5, "eval_loss": 2.9}]
    out = loss_svg(rows)
    assert 'data-points="5"' in out
    points = re.search(r'class="lt-train-loss"[^>]*points="([^"]+)"', out).group(1).split()
    assert len(points) == 5
    ys = [float(p.split(",")[1]) for p in points]
    assert ys == sorted(ys)  # falling loss is drawn going down the page (SVG y grows downwards)
    assert 'class="lt-eval-loss"' in out
    assert 'data-points="0"' in loss_svg([])


# ---------------------------------------------------------------- data tab
def test_inspect_shows_what_data_inspect_computes(root):
    from lmtune.ui.data_tab import inspect_data

    summary, hist, example = inspect_data(root, "data/sums.jsonl", str(root / "models" / "tiny"))
    assert "**Detected format: `openai`**" in summary
    assert "16 read, 16 usable, 0 rejected" in summary
    assert "&lt;=64 tokens" in hist and ">16</td>" in hist  # 16 samples of about 48 tokens
    trained = re.findall(r'class="lt-trained"[^>]*>([^<]*)</span>', example)
    assert trained == ["1 plus 2 is 3.&lt;|im_end|&gt;\n"]


def test_inspect_of_a_bad_file_is_one_sentence(root):
    from lmtune.ui.callbacks import guarded
    from lmtune.ui.data_tab import inspect_data

    call = guarded(lambda p: inspect_data(root, p, "models/tiny"), lambda m: (m, "", ""))
    msg, _, _ = call("/etc/passwd")
    assert msg.startswith("**error:** /etc/passwd: outside the working directory")
    msg, _, _ = call("")
    assert msg.startswith("**error:** No data file given")


def test_upload_is_copied_inside(root, tmp_path):
    from lmtune.ui.data_tab import save_upload

    up = tmp_path / "mine.jsonl"
    up.write_text('{"messages": []}\n')
    assert save_upload(root, str(up)) == "uploads/mine.jsonl"
    assert (root / "uploads" / "mine.jsonl").read_text() == up.read_text()


# ---------------------------------------------------------------- errors
def test_unexpected_errors_are_one_line_without_traceback():
    from lmtune.ui.callbacks import guarded, guarded_stream

    def boom():
        raise KeyError("x")

    assert guarded(boom, lambda m: m)() == (
        "**error:** unexpected KeyError: 'x' (details in the terminal running `lmtune ui`)"
    )

    def missing():
        raise FileNotFoundError(2, "No such file or directory", "data/gone.jsonl")

    # A library error the input caused reads as the CLI prints it (lmtune.cli.errors), not "unexpected".
    assert guarded(missing, lambda m: m)() == (
        "**error:** data/gone.jsonl: not found. Fix: check the path and its permissions."
    )

    def stream():
        yield "half"
        raise LmtuneError("the model folder has no config.json")

    assert list(guarded_stream(stream, lambda m: m)()) == [
        "half",
        "**error:** the model folder has no config.json",
    ]


def test_a_failed_command_shows_the_cli_error(root):
    from lmtune.ui.jobs import Job

    job = Job(["data", "inspect", "missing.jsonl", "--model", "models/tiny"], root / "job.log", root)
    assert job.wait(300) == 2
    err = job.error()
    assert err is not None and "missing.jsonl" in err and "Traceback" not in err
    assert job.command == "lmtune data inspect missing.jsonl --model models/tiny"


# ---------------------------------------------------------------- runs, eval, export
def test_runs_list_and_metrics(root):
    from lmtune.ui.runs import list_runs, read_metrics, runs_markdown

    run = root / "runs" / "r1"
    from lmtune.train.checkpoints import commit_checkpoint

    staged = run / "checkpoints" / ".incomplete" / "checkpoint-4"
    staged.mkdir(parents=True)
    (staged / "trainer_state.json").write_text("{}")
    commit_checkpoint(staged, run / "checkpoints" / "checkpoint-4", step=4)  # complete, as training leaves it
    (run / "checkpoints" / "checkpoint-6").mkdir()  # a save cut off: not resumable
    (run / "lmtune_run.json").write_text(json.dumps({"base_model": "models/tiny", "method": "lora"}))
    (run / "metrics.jsonl").write_text('{"step": 2, "loss": 2.5}\n{"step": 4, "loss": 2.0}\n{"step": 6, "lo')
    assert [r["step"] for r in read_metrics(run)] == [2, 4]  # the line being written is skipped
    (row,) = list_runs(root / "runs")
    assert row["state"] == "stopped at checkpoint-4 (resumable)" and row["last loss"] == 2.0
    (run / "summary.json").write_text("{}")
    assert "| finished |" in runs_markdown(root / "runs")


def test_eval_and_export_commands_stay_inside(root):
    from lmtune.ui.tasks_tab import default_export_path, eval_args, export_args

    (root / "runs" / "r1").mkdir(parents=True, exist_ok=True)
    args, out = eval_args(root, "runs/r1", "data/sums.jsonl", "auto", 4)
    assert args == ["eval", "runs/r1", "--data", "data/sums.jsonl", "--out", "runs/r1/eval", "--name", "ui",
                    "--limit", "4"]  # fmt: skip
    assert out == root.resolve() / "runs/r1/eval"
    assert default_export_path("runs/r1", "gguf") == "runs/r1-export/r1.gguf"
    args, _ = export_args(root, "runs/r1", "gguf", "runs/r1-export/r1.gguf", "q8_0")
    assert args == ["export", "runs/r1", "runs/r1-export/r1.gguf", "--format", "gguf", "--quant", "q8_0"]
    assert export_args(root, "runs/r1", "merge", "merged", "f16")[0] == ["merge", "runs/r1", "merged"]
    with pytest.raises(ConfigError, match="outside the working directory"):
        export_args(root, "runs/r1", "onnx", "/tmp/elsewhere", "f16")
    with pytest.raises(ConfigError, match="outside the working directory"):
        eval_args(root, "runs/r1", "../../etc/passwd", "auto", None)


# ---------------------------------------------------------------- chat
def test_chat_streams_the_same_reply_as_generate(root):
    from lmtune.infer.generate import GenerationOptions, generate_replies
    from lmtune.ui.chat_tab import loaded, resolve_target, stream_chat

    target = resolve_target("models/tiny", root)
    states = list(stream_chat(target, [], "What is 3 plus 5?", max_new_tokens=24))
    replies = [s[-1]["content"] for s in states]
    assert states[-1][0] == {"role": "user", "content": "What is 3 plus 5?"}
    assert len(set(replies)) > 3  # it grew piece by piece
    assert all(b.startswith(a) for a, b in zip(replies, replies[1:]))
    m = loaded(target)
    (expected,) = generate_replies(
        m.model,
        m.tokenizer,
        [[{"role": "user", "content": "What is 3 plus 5?"}]],
        GenerationOptions(max_new_tokens=24),
    )
    assert replies[-1] == expected
    # A second turn, with the history as Gradio 6 hands it back (each content a list of text parts).
    history = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in states[-1]]
    *_, last = stream_chat(target, history, "And 4 plus 4?", max_new_tokens=24)
    convo = [*states[-1], {"role": "user", "content": "And 4 plus 4?"}]
    (expected,) = generate_replies(m.model, m.tokenizer, [convo], GenerationOptions(max_new_tokens=24))
    assert last[:-1] == convo and last[-1]["content"] == expected
    with pytest.raises(ConfigError, match="not a run directory"):
        from lmtune.ui.chat_tab import base_of

        base_of(target)


# ---------------------------------------------------------------- command and defaults
def test_missing_gradio_names_the_extra(monkeypatch):
    import importlib.util

    from lmtune.ui import require_gradio

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gradio" else real(n, *a))
    with pytest.raises(ConfigError, match=re.escape('pip install "lmtune[ui]"')):
        require_gradio()


def test_launch_defaults_are_local_and_private(monkeypatch, root):
    import gradio as gr
    from typer.testing import CliRunner

    from lmtune.cli.app import app
    from lmtune.ui.app import launch

    help_text = CliRunner().invoke(app, ["ui", "--help"], env={"COLUMNS": "200"}).output
    assert "127.0.0.1" in help_text and "7860" in help_text and "--share" in help_text
    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    launch(root)
    assert seen["server_name"] == "127.0.0.1" and seen["server_port"] == 7860 and seen["share"] is False
    assert yaml.safe_dump(seen["footer_links"]) == "[]\n"


def test_browser_tests_fail_without_chromium(monkeypatch):
    """No chromium: the browser tests fail and say how to install it (they are never skipped)."""
    import shutil as sh

    from tests.ui.support import chromium_path

    monkeypatch.delenv("LMTUNE_CHROMIUM", raising=False)
    monkeypatch.setattr(sh, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y chromium"):
        chromium_path()
