"""`lmtune serve` on the command line: mistakes are one sentence before anything is served (a
classification run, names that do not match the targets, a port in use, an empty key), model ids,
and what the startup banner tells the user."""

from __future__ import annotations

import json
import socket

import pytest
from typer.testing import CliRunner

from lmtune.cli.app import app
from lmtune.errors import ConfigError
from lmtune.serve.server import banner, bind, load_slots

runner = CliRunner()


def test_serve_has_help():
    res = runner.invoke(app, ["serve", "--help"])
    assert res.exit_code == 0
    for option in (
        "--host",
        "--port",
        "--api-key",
        "--name",
        "--max-tokens-limit",
        "--max-request-bytes",
        "--max-batch",
        "--max-queue",
        "--engine",
    ):
        assert option in res.output


def test_a_classification_run_is_refused_before_loading(tmp_path, tiny_model_dir):
    (tmp_path / "lmtune_run.json").write_text(json.dumps({"task": "classification", "method": "lora"}))
    res = runner.invoke(app, ["serve", str(tiny_model_dir), str(tmp_path)])
    assert isinstance(res.exception, ConfigError), res.output
    assert "classification run" in str(res.exception) and "lmtune serve" in str(res.exception)


def test_names_must_match_the_targets(tiny_model_dir):
    res = runner.invoke(app, ["serve", str(tiny_model_dir), str(tiny_model_dir), "--name", "a"])
    assert isinstance(res.exception, ConfigError) and "one --name per target" in str(res.exception)
    with pytest.raises(ConfigError, match="Two targets would both be served as model 'tiny_llama"):
        load_slots([str(tiny_model_dir), str(tiny_model_dir)])
    slots = load_slots([str(tiny_model_dir), str(tiny_model_dir)], ["a", "b"])
    assert [s.id for s in slots] == ["a", "b"] and slots[0].model is not slots[1].model


def test_an_empty_api_key_is_refused(tiny_model_dir):
    res = runner.invoke(app, ["serve", str(tiny_model_dir), "--api-key", " "])
    assert isinstance(res.exception, ConfigError) and "--api-key is empty" in str(res.exception)


def test_a_port_in_use_is_a_sentence(tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"Cannot listen on 127.0.0.1:{port}.*--port"):
            bind("127.0.0.1", port)
        res = runner.invoke(app, ["serve", str(tiny_model_dir), "--port", str(port)])
        assert isinstance(res.exception, ConfigError) and "another server" in str(res.exception)


def test_banner(tiny_model_dir):
    slots = load_slots([str(tiny_model_dir)], ["tiny"])
    url = "http://127.0.0.1:8000/v1"
    local = banner(slots, url, api_key=False, host="127.0.0.1")
    assert "tiny" in local and url in local and str(tiny_model_dir) in local
    curl = next(line for line in local.splitlines() if "curl" in line)
    assert json.loads(curl.split("-d '")[1].rstrip("'"))["model"] == "tiny"
    assert "Authorization" not in local and "warning" not in local
    keyed = banner(slots, url, api_key=True, host="127.0.0.1")
    assert "Authorization: Bearer $LMTUNE_API_KEY" in keyed
    public = banner(slots, "http://0.0.0.0:8000/v1", api_key=False, host="0.0.0.0")
    assert "warning: listening on 0.0.0.0 without --api-key" in public
    assert "warning" not in banner(slots, url, api_key=True, host="0.0.0.0")


def test_engine_choice(tiny_model_dir):
    import importlib.util

    res = runner.invoke(app, ["serve", str(tiny_model_dir), "--engine", "tgi"])
    assert isinstance(res.exception, ConfigError) and "choose lmtune or vllm" in str(res.exception)
    if importlib.util.find_spec("vllm") is None:  # this machine: the hand-off explains what is missing
        res = runner.invoke(app, ["serve", str(tiny_model_dir), "--engine", "vllm"])
        assert isinstance(res.exception, ConfigError) and "pip install vllm" in str(res.exception)
