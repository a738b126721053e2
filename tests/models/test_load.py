"""Loading tokenizer and model from a ModelRef: dtype choice, the one report line, error sentences."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from lmtune.errors import ModelError
from lmtune.models import load
from lmtune.models.load import (
    count_parameters,
    describe_model,
    format_count,
    load_causal_lm,
    load_tokenizer,
    pick_dtype,
)
from lmtune.models.resolve import ModelRef, resolve_model_ref


def expected_tiny_params() -> int:
    """Counted from the conftest config by hand: embeddings and the untied head, 2 layers, final norm."""
    vocab, hidden, inter, kv = 49152, 64, 128, 2 * 16  # 2 kv heads x head_dim 16
    layer = hidden * hidden * 2 + hidden * kv * 2 + hidden * inter * 3 + hidden * 2
    return 2 * vocab * hidden + 2 * layer + hidden


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_causal_lm(resolve_model_ref(str(tiny_model_dir)), quiet=True)


def test_tiny_folder_loads_and_reports_one_line(tiny_model_dir, capsys):
    import torch

    model = load_causal_lm(resolve_model_ref(str(tiny_model_dir)))
    assert model.dtype == torch.float32
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Loaded")]
    assert lines == [f"Loaded {tiny_model_dir.name}: {describe_model(model)}"]


def test_quiet_prints_nothing(tiny_model_dir, capsys):
    load_causal_lm(resolve_model_ref(str(tiny_model_dir)), quiet=True)
    captured = capsys.readouterr()
    assert "Loaded" not in captured.out + captured.err


def test_count_parameters_matches_a_manual_sum(tiny):
    unique = {id(p): p for p in tiny.parameters()}  # tied lm_head/embedding counted once
    assert count_parameters(tiny) == (sum(p.numel() for p in unique.values()),) * 2
    assert count_parameters(tiny)[0] == expected_tiny_params()


def test_describe_model(tiny):
    assert re.fullmatch(r"\d+\.\dM parameters, float32, cpu", describe_model(tiny))
    assert describe_model(tiny) == f"{expected_tiny_params() / 1e6:.1f}M parameters, float32, cpu"


def test_describe_model_shows_trainable_when_some_are_frozen(tiny_model_dir):
    model = load_causal_lm(resolve_model_ref(str(tiny_model_dir)), quiet=True)
    model.get_input_embeddings().weight.requires_grad_(False)
    total, trainable = count_parameters(model)
    assert total == expected_tiny_params() and trainable == total - 49152 * 64
    assert f"({format_count(trainable)} trainable)" in describe_model(model)


def test_format_count():
    assert [format_count(n) for n in (134_515_008, 1_240_000_000, 3_200, 12)] == [
        "134.5M",
        "1.24B",
        "3.2K",
        "12",
    ]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_explicit_dtype_is_honoured(tiny_model_dir, dtype):
    import torch

    model = load_causal_lm(resolve_model_ref(str(tiny_model_dir)), dtype=dtype, quiet=True)
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    assert f", {dtype}, cpu" in describe_model(model)


def test_auto_dtype(monkeypatch):
    assert pick_dtype("auto", "cpu", config_dtype=None) == "float32"
    assert pick_dtype("bfloat16", "cpu", config_dtype=None) == "bfloat16"
    assert pick_dtype("float32", "cpu", config_dtype="bfloat16") == "float32"
    monkeypatch.setattr(load, "device_supports", lambda dtype, device: True)
    assert pick_dtype("auto", "cpu", config_dtype="bfloat16") == "bfloat16"
    monkeypatch.setattr(load, "device_supports", lambda dtype, device: False)
    assert pick_dtype("auto", "cpu", config_dtype="bfloat16") == "float32"


def test_auto_dtype_follows_a_bfloat16_config_only_where_the_cpu_has_it(tiny_model_dir, tmp_path):
    folder = tmp_path / "bf16"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (folder / "config.json").write_text(json.dumps(config))
    model = load_causal_lm(resolve_model_ref(str(folder)), quiet=True)
    native = load.device_supports("bfloat16", "cpu")
    assert str(model.dtype) == ("torch.bfloat16" if native else "torch.float32")


def test_bad_dtype_and_missing_gpu(tiny_model_dir):
    import torch

    ref = resolve_model_ref(str(tiny_model_dir))
    with pytest.raises(ModelError, match="Unknown dtype 'int4'"):
        load_causal_lm(ref, dtype="int4")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU"):
            load_causal_lm(ref, device="cuda")


def test_tokenizer_gets_a_pad_token(tiny_model_dir, tmp_path):
    folder = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(resolve_model_ref(str(folder)))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template


def test_folder_without_weights_is_a_sentence(tiny_model_dir, tmp_path):
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelError) as info:
        load_causal_lm(resolve_model_ref(str(tmp_path)), quiet=True)
    text = str(info.value)
    assert str(tmp_path) in text and "model.safetensors" in text


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs HF_HUB_OFFLINE=1 to stay offline")
def test_hub_id_offline_names_the_offline_options():
    ref = ModelRef("lmtune-test/does-not-exist", "hub", "lmtune-test/does-not-exist", None, "x")
    with pytest.raises(ModelError) as info:
        load_causal_lm(ref, quiet=True)
    text = str(info.value)
    assert "lmtune-test/does-not-exist" in text and "HF_HUB_OFFLINE" in text and "alias" in text
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        load_tokenizer(ref)
