"""`lmtune export --format gptq|awq` (llm-compressor): a compressed-tensors folder holding packed
integer weights, which transformers' plain `from_pretrained` loads and generates with, close to the
original model; calibration from a --calib file with its held-out tail measured; clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from tests.export.test_quantize import ITEMS
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from lmtune.cli.app import app
from lmtune.errors import ConfigError
from lmtune.eval.items import EvalItem
from lmtune.export import compressed
from lmtune.export.records import ExportRecords

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROBE = "The quick brown fox jumps over the lazy dog."
CALIB = [
    EvalItem(f"c#{k}", [], messages=[{"role": "user", "content": f"Tell me about the number {k}."},
                                      {"role": "assistant", "content": f"{k} is {'even' if k % 2 == 0 else 'odd'}."}])
    for k in range(10)
]  # fmt: skip


def logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(PROBE, return_tensors="pt")).logits[0]


def check_folder(folder, original, tokenizer, *, bits: int, group: int, rel_logits: float) -> None:
    """Packed integer weights on disk, reloaded by plain transformers, logits within `rel_logits`
    (relative L2 distance to the original's logits on a probe sentence; the tiny random model's large
    head amplifies weight error: measured 0.12 for AWQ 4-bit, 0.19 GPTQ 4-bit, 0.011 GPTQ 8-bit)."""
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    weights = config["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["symmetric"]) == (bits, group, True)
    with safe_open(folder / "model.safetensors", "pt") as f:
        names = set(f.keys())
        packed = f.get_tensor("model.layers.0.self_attn.q_proj.weight_packed")
    assert packed.dtype == torch.int32 and packed.shape == (64, 64 * bits // 32)  # 32/bits weights per int32
    assert "model.layers.0.self_attn.q_proj.weight" not in names and "lm_head.weight" in names  # head kept

    reloaded = AutoModelForCausalLM.from_pretrained(folder)  # runs the packed weights
    assert {n for n, _ in reloaded.model.layers[0].self_attn.q_proj.named_parameters()} >= {"weight_packed"}
    a, b = logits(original, tokenizer), logits(reloaded, tokenizer)
    rel = float((a - b).norm() / a.norm())
    assert 0 < rel < rel_logits, rel  # quantized (not a float copy), and close to the original
    ids = tokenizer(PROBE, return_tensors="pt")["input_ids"]
    new = reloaded.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1] :]
    assert len(new) == 6  # it generates


@pytest.mark.parametrize("fmt,bits,rel_logits", [("awq", 4, 0.25), ("gptq", 8, 0.03)])
def test_compressed_folder_loads_in_transformers(fmt, bits, rel_logits, tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = ExportRecords(held_out=ITEMS, held_out_source="ITEMS", calib=CALIB, calib_source="CALIB")
    report = compressed.export_compressed(
        model,
        tokenizer,
        tmp_path / fmt,
        fmt=fmt,
        records=records,
        bits=bits,
        group_size=32,
        say=lambda *_: None,
    )
    check_folder(tmp_path / fmt, model, tokenizer, bits=bits, group=32, rel_logits=rel_logits)
    assert report["calibration"]["records"] == len(CALIB)
    u, q = report["unquantized"], report["quantized"]
    assert u["loss_tokens"] == q["loss_tokens"] > 0 and q["size_bytes"] < u["size_bytes"]
    assert not list(tmp_path.glob(".*unquantized"))


def test_gptq_cli_with_calib_file(tiny_model_dir, tmp_path):
    calib = tmp_path / "calib.jsonl"
    calib.write_text("".join(json.dumps({"messages": it.messages}) + "\n" for it in CALIB))
    out = tmp_path / "gptq"
    args = [
        "export",
        str(tiny_model_dir),
        str(out),
        "--format",
        "gptq",
        "--group-size",
        "32",
        "--calib",
        str(calib),
    ]
    result = CliRunner().invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    check_folder(out, model, AutoTokenizer.from_pretrained(tiny_model_dir), bits=4, group=32, rel_logits=0.25)
    report = json.loads((out / "quantization.json").read_text())
    assert report["calibration"]["records"] == 8 and "last 2 records" in report["held_out"]  # 20% held out
    assert report["quantized"]["loss_records"] == 2 and report["ppl_gate"] in ("passed", "forced")
    readme = (out / "README.md").read_text()
    assert f"vllm serve ./{out.name}" in readme and "| perplexity (held-out answers) |" in readme
    assert "gptq: " in result.output and "perplexity" in result.output


def test_group_size_and_bits_errors(tiny_model_and_tokenizer):
    model, _ = tiny_model_and_tokenizer  # widths 64 and 128
    with pytest.raises(
        ConfigError, match=r"--group-size 128 does not divide .*64 columns.*Use --group-size 64"
    ):
        compressed.check_options(model, bits=4, group_size=128)
    with pytest.raises(ConfigError, match="--bits 3"):
        compressed.check_options(model, bits=3, group_size=32)
    compressed.check_options(model, bits=8, group_size=64)


def test_missing_llm_compressor_names_the_extra(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(compressed, "available", lambda: False)
    result = CliRunner().invoke(app, ["export", str(tiny_model_dir), str(tmp_path / "o"), "--format", "awq"])
    assert isinstance(result.exception, ConfigError) and "pip install 'lmtune[gptq]'" in str(result.exception)
    assert not (tmp_path / "o").exists()
