"""GGUF k-quants (q4_k_m, q5_k_m, q6_k) by llama.cpp's own quantizer, from an f16 file we write:
the file holds k-quant blocks, loads and generates in llama.cpp, and is measured against an f16 file
(gguf/quality.py: size, greedy agreement, tokens/s; perplexity is checked in test_quant_quality.py)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from gguf import GGMLQuantizationType
from tests.conftest import TINY

from lmtune.errors import ConfigError
from lmtune.export.gguf import export_gguf, llamacpp
from lmtune.export.gguf.checks import file_tensor_types
from lmtune.export.gguf.quality import measure_gguf, write_report

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (make install adds ../shared/wheels/llama_cpp_python-*.whl)",
)


@needs_llama_cpp
def test_q4_k_m_is_llama_cpps_k_quant_and_runs(tmp_path, smollm2_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)  # rows of 256: k-quant super-blocks (llama.cpp falls back below that)
    config = LlamaConfig(**{**TINY, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 1})
    model = LlamaForCausalLM(config).eval()
    path = export_gguf(model, smollm2_tokenizer, tmp_path / "m.q4_k_m.gguf", quant="q4_k_m", notes=[])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.q4_k_m.gguf"]  # no f16 left
    types = {GGMLQuantizationType(t).name for t in file_tensor_types(path).values()}
    assert "Q4_K" in types and "Q6_K" in types  # q4_k_m's mix: most matrices Q4_K, some Q6_K
    report = measure_gguf(path, model, smollm2_tokenizer, quant="q4_k_m", items=None)
    write_report(path, report)
    assert json.loads(path.with_suffix(".quant.json").read_text())["tensor_types"] == report["tensor_types"]
    q, f16 = report["quantized"], report["unquantized"]
    assert report["quant"] == "q4_k_m" and q["size_bytes"] == path.stat().st_size
    assert q["size_bytes"] < 0.5 * f16["size_bytes"]  # ~4.5 bits against 16
    assert 0.0 <= report["greedy_prefix_agreement"] <= 1.0 and report["prompts"] == 4
    assert q["tokens_per_second"] > 0 and f16["tokens_per_second"] > 0  # both generated in llama.cpp
    llm = llamacpp.open_llama(path)
    _, new = llamacpp.cpp_logits_and_greedy(llm, [1, 2, 3, 4], 5, [])
    llm.close()
    assert len(new) == 5


def test_k_quant_without_llama_cpp_names_the_extra(tmp_path, smollm2_tokenizer, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    monkeypatch.setattr(llamacpp, "available", lambda: False)
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    with pytest.raises(ConfigError, match=r"lmtune\[llamacpp\]"):
        export_gguf(model, smollm2_tokenizer, tmp_path / "m.gguf", quant="q6_k", notes=[])
    assert not list(tmp_path.iterdir())
