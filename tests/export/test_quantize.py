"""`lmtune export --format int8|int4` (torchao int8, bitsandbytes NF4): a folder that reloads, weights within
the quantization error of the originals (checked by dequantizing them), and the measured table."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from lmtune.cli.app import app
from lmtune.errors import ConfigError
from lmtune.eval.items import EvalItem
from lmtune.export.quantize import export_quantized

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ITEMS = [
    EvalItem(f"s#{a}", [{"role": "user", "content": f"What is {a} plus 2?"}], f"{a} plus 2 is {a + 2}.",
             messages=[{"role": "user", "content": f"What is {a} plus 2?"},
                       {"role": "assistant", "content": f"{a} plus 2 is {a + 2}."}])
    for a in range(1, 5)
]  # fmt: skip


def dequantized(module) -> torch.Tensor:
    """The weight as the quantized layer computes with it, rebuilt from what is stored."""
    w = module.weight
    if hasattr(w, "quant_state"):  # bitsandbytes NF4
        import bitsandbytes as bnb

        return bnb.functional.dequantize_4bit(w.data, w.quant_state).float()
    return w.dequantize().float()  # torchao Int8Tensor


@pytest.mark.parametrize("fmt,rel_error", [("int8", 0.01), ("int4", 0.2)])
def test_quantized_folder(fmt, rel_error, tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    report = export_quantized(
        model, tokenizer, tmp_path / fmt, fmt=fmt, items=ITEMS, force=True, say=lambda *_: None
    )

    method = json.loads((tmp_path / fmt / "config.json").read_text())["quantization_config"]["quant_method"]
    assert method == {"int8": "torchao", "int4": "bitsandbytes"}[fmt]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / fmt, device_map="cpu")
    q = reloaded.model.layers[0].self_attn.q_proj
    original = model.model.layers[0].self_attn.q_proj.weight.detach()
    error = (dequantized(q) - original).norm() / original.norm()
    assert 0 < error < rel_error  # quantized (not a float copy), and close to the original

    u, qz = report["unquantized"], report["quantized"]
    assert qz["size_bytes"] < u["size_bytes"] and report["size_ratio"] == qz["size_bytes"] / u["size_bytes"]
    assert u["loss_tokens"] == qz["loss_tokens"] > 0 and qz["perplexity"] > 1
    assert report["ppl_increase"] == pytest.approx(qz["perplexity"] / u["perplexity"] - 1)
    assert (
        report["prompts"] == 4 and 0 <= report["greedy_prefix_agreement"] <= 1 and qz["tokens_per_second"] > 0
    )
    assert "| perplexity (held-out answers) |" in (tmp_path / fmt / "README.md").read_text()
    assert not list(tmp_path.glob(".*unquantized"))  # the staging copy is gone


def test_export_option_errors(tiny_model_dir, tmp_path):
    runner = CliRunner()
    cases = [
        (["--format", "tflite"], "--format"),
        (["--quant", "q5_k"], "--quant"),
    ]
    for extra, needle in cases:
        result = runner.invoke(app, ["export", str(tiny_model_dir), str(tmp_path / "m.gguf"), *extra])
        assert isinstance(result.exception, ConfigError) and needle in str(result.exception)
    result = runner.invoke(app, ["export", str(tiny_model_dir), str(tmp_path / "m.bin")])
    assert "ending in .gguf" in str(result.exception)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    result = runner.invoke(app, ["export", str(tiny_model_dir), str(tmp_path / "busy"), "--format", "int8"])
    assert "not an empty folder" in str(result.exception)


def test_missing_torchao_is_one_sentence(monkeypatch):
    import sys

    from lmtune.export.quantize import quantization_config

    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(ConfigError, match=r"needs torchao: pip install 'lmtune\[quant\]'"):
        quantization_config("int8")
