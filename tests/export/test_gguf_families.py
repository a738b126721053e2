"""GGUF export of every model family, run in llama.cpp itself (llama-cpp-python, the runtime
Ollama and LM Studio build on) and compared with transformers on the same prompt token ids.

Agreement rule (lmtune.export.gguf.llamacpp): the greedy tokens are equal until the first
difference, which must be a near tie in transformers' own logits (within the quant's max-logit
tolerance); f16 must be identical outright. Prompt logits must agree within the tolerance too, and
llama.cpp's tokenizer must give transformers' ids on a mixed English / Chinese / emoji text.

The tiny random models are 2 layers, 64 wide, with the families' real vocabularies; their greedy
replies run 16 tokens of varied ids (checked), so an agreement is not an accident of repetition.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from tests.families import MODEL_FAMILIES

from lmtune.errors import ConfigError
from lmtune.export.gguf import QUANT_TOLERANCES, export_gguf
from lmtune.export.gguf.llamacpp import llama_cpp_checks
from lmtune.export.gguf.verify import chat_prompt_ids, stop_ids

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None,
        reason="llama-cpp-python is not installed (make install adds ../shared/wheels/llama_cpp_python-*.whl; "
        "or pip install 'lmtune[llamacpp]')",
    ),
]
PROMPTS = ["What is the capital of France?", "Name a colour."]
# Logit tolerances for these tiny models, tighter than the export's own (measured on SmolLM2, whose
# logits are larger): measured here max |diff| <= 0.012 at f16 and <= 0.25 at q8_0 (2-core EPYC).
TINY_TOLERANCE = {"f16": 0.1, "q8_0": 1.0}


def _load(family_model_dir, family: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = family_model_dir(family)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    if family == "gemma2":  # llama.cpp's gemma2 always uses the embedding as head: export tied only
        model.lm_head.weight = model.model.embed_tokens.weight
        model.config.tie_word_embeddings = True
        # A tied tiny Gemma repeats its last token (tests/families.py); larger post-norms let the
        # layers outweigh the residual, so the replies depend on the prompt.
        with torch.no_grad():
            for layer in model.model.layers:
                layer.post_attention_layernorm.weight.fill_(8.0)
                layer.post_feedforward_layernorm.weight.fill_(8.0)
    return model, AutoTokenizer.from_pretrained(folder)


# f16 for every family; q8_0 (the same writer, quantized blocks) for a dense and a MoE family in the
# default run and for the rest under `slow` (CI time); the real SmolLM2 at q8_0 in test_gguf.py (slow).
Q8_IN_CI = ("llama3", "qwen3_moe")
CASES = [(family, "f16") for family in MODEL_FAMILIES] + [
    pytest.param(family, "q8_0", marks=() if family in Q8_IN_CI else pytest.mark.slow)
    for family in MODEL_FAMILIES
]


@pytest.mark.parametrize("family,quant", CASES)
def test_family_gguf_runs_in_llama_cpp_like_transformers(family, quant, family_model_dir, tmp_path):
    model, tokenizer = _load(family_model_dir, family)
    prompts = [chat_prompt_ids(tokenizer, text) for text in PROMPTS]
    path = export_gguf(model, tokenizer, tmp_path / f"{family}-{quant}.gguf", quant=quant, notes=[])
    tolerance = TINY_TOLERANCE[quant]
    assert tolerance <= QUANT_TOLERANCES[quant]["max"]
    stop = stop_ids(tokenizer, model)
    report = llama_cpp_checks(path, model, tokenizer, prompts, stop=stop, tolerance=tolerance)
    assert report["tokenizer_match"], (report["tokens_hf"], report["tokens_llama_cpp"])
    assert len(report["tokens_hf"]) > 20  # the mixed text really was split into many pieces
    assert report["max_abs_logit_diff"] <= tolerance, report["max_abs_logit_diff"]
    replies = {token for row in report["prompts"] for token in row["greedy_transformers"]}
    assert len(replies) >= 4, report["prompts"]  # replies that depend on the prompt, not one token
    for row in report["prompts"]:
        assert row["agrees"], row
        if quant == "f16":
            assert row["identical"], row
    assert report["passed"]


def test_gemma_norm_shift_and_llama3_rope_factors_matter(family_model_dir, tmp_path, monkeypatch):
    """The checks can fail: a Gemma 3 file without the +1 norm convention, or a Llama 3 file whose
    rope factors are dropped, answers differently in llama.cpp and is caught."""
    from lmtune.export.gguf import arch as arch_table
    from lmtune.export.gguf import tensors

    model, tokenizer = _load(family_model_dir, "gemma3")
    prompts = [chat_prompt_ids(tokenizer, PROMPTS[0])]
    broken = dict(arch_table.ARCHS, gemma3_text=arch_table.GgufArch("gemma3", "GEMMA3"))
    monkeypatch.setattr(arch_table, "ARCHS", broken)
    path = export_gguf(model, tokenizer, tmp_path / "gemma3-noshift.gguf", quant="f16", notes=[])
    report = llama_cpp_checks(
        path, model, tokenizer, prompts, stop=stop_ids(tokenizer, model), tolerance=0.25
    )
    assert not report["passed"] and report["max_abs_logit_diff"] > 1.0
    monkeypatch.undo()

    from tests.families import tiny_config
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)  # llama3 RoPE on the small SentencePiece vocabulary (a 128k one costs seconds)
    # The factors scale only the slow rotary frequencies, which turn visibly only far into a text: an
    # original context of 64 (not 8192) puts most frequencies in the scaled range, and a 300-token
    # prompt shows them (a short chat prompt would not).
    rope = {**tiny_config("llama3", 8).rope_parameters, "original_max_position_embeddings": 64}
    model = LlamaForCausalLM(tiny_config("llama3", len(tokenizer), rope_scaling=rope)).eval()
    with torch.no_grad():  # sharper attention, so positions matter (at init they barely do: 0.005)
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(30.0)
            layer.self_attn.k_proj.weight.mul_(30.0)
    long = [list(range(100, 400))]
    stop = stop_ids(tokenizer, model)
    path = export_gguf(model, tokenizer, tmp_path / "llama3.gguf", quant="f16", notes=[])
    report = llama_cpp_checks(path, model, tokenizer, long, stop=stop, tolerance=0.1)
    assert report["passed"] and report["max_abs_logit_diff"] < 0.1
    monkeypatch.setattr(tensors, "llama3_rope_factors", lambda config: None)
    path = export_gguf(model, tokenizer, tmp_path / "llama3-norope.gguf", quant="f16", notes=[])
    report = llama_cpp_checks(path, model, tokenizer, long, stop=stop, tolerance=0.1)
    assert not report["passed"] and report["max_abs_logit_diff"] > 0.1


def test_llama3_rope_factors_match_transformers_inverse_frequencies():
    """rope_freqs (llama.cpp divides each base frequency by it) equals transformers' own llama3
    frequencies: base / scaled, computed by transformers' ROPE_INIT_FUNCTIONS."""
    import torch
    from tests.families import tiny_config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from lmtune.export.gguf.tensors import llama3_rope_factors

    config = tiny_config("llama3", 1000)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    dim = config.hidden_size // config.num_attention_heads
    base = 1.0 / (config.rope_parameters["rope_theta"] ** (torch.arange(0, dim, 2).float() / dim))
    factors = llama3_rope_factors(config)
    np.testing.assert_allclose(factors, (base / scaled).numpy(), rtol=1e-5)
    assert factors.min() == 1.0 and factors.max() == 8.0  # both ends of the piecewise rule are used


def test_refused_up_front_with_the_reason(family_model_dir, tmp_path):
    """An untied Gemma 2 head (llama.cpp's gemma2 would ignore it) and Qwen3-MoE without top-k
    renormalisation (llama.cpp always renormalises) are refused before anything is written."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = family_model_dir("gemma2")
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with pytest.raises(ConfigError, match="always uses the embedding as the head"):
        export_gguf(model, tokenizer, tmp_path / "g.gguf", notes=[])
    folder = family_model_dir("qwen3_moe")
    model = AutoModelForCausalLM.from_pretrained(folder, norm_topk_prob=False)
    with pytest.raises(ConfigError, match="norm_topk_prob"):
        export_gguf(model, AutoTokenizer.from_pretrained(folder), tmp_path / "q.gguf", notes=[])
    assert not list(tmp_path.iterdir())
