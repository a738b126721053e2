"""`lmtune export` on a run directory: the run is merged first, and the exported file answers like
the run loaded unmerged (the exporters' own checks are in tests/export/)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lmtune.cli.app import app
from lmtune.config.loader import validate_config
from lmtune.run.load import load_target
from lmtune.train.runner import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, sums_file, tmp_path_factory):
    cfg = validate_config(
        {
            "model": {"name": str(tiny_model_dir)},
            "data": {"path": str(sums_file), "max_length": 64},
            "method": {"name": "lora", "r": 4, "alpha": 8},
            "train": {"max_steps": 6, "lr": 2e-2, "batch_size": 4, "bf16": False},
            "output": {"dir": str(tmp_path_factory.mktemp("export_run") / "run")},
        }
    )
    return train(cfg).run_dir


def run_logits(run_dir, ids):
    loaded = load_target(str(run_dir), quiet=True)
    with torch.no_grad():
        return loaded.model(input_ids=torch.tensor([ids])).logits[0].numpy()


def prompt_ids(tokenizer):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 3?"}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_onnx_export_of_a_run(lora_run, tmp_path):
    from lmtune.export.onnx import onnx_logits, open_session

    out = tmp_path / "onnx"
    result = runner.invoke(app, ["export", str(lora_run), str(out), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "onnx_verify.json").read_text())["passed"] is True
    loaded = load_target(str(lora_run), quiet=True)
    ids = prompt_ids(loaded.tokenizer)
    got = onnx_logits(open_session(out / "model.onnx"), np.array([ids]))[0]
    np.testing.assert_allclose(got, run_logits(lora_run, ids), atol=1e-3, rtol=1e-3)


def test_gguf_export_of_a_run(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "m.gguf"
    result = runner.invoke(app, ["export", str(lora_run), str(out), "--format", "gguf", "--quant", "f16"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".verify.json").read_text())["passed"] is True
    assert (tmp_path / "Modelfile").is_file()
    loaded = load_target(str(lora_run), quiet=True)
    ids = prompt_ids(loaded.tokenizer)
    read_back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name)
    with torch.no_grad():
        got = read_back(input_ids=torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(got, run_logits(lora_run, ids), atol=5e-2, rtol=5e-2)  # f16 weights
