"""Tiny test models of each popular model family, built from the family's real tokenizer and chat template.

The tokenizers are llama.cpp's vocabulary-only GGUFs in `../shared/data/llamacpp_vocab_templates/vocab`
(loaded by transformers), the templates the ones the instruct models ship. Where a family's own
vocabulary is not at hand (Gemma, SmolLM3, Granite) a stand-in vocabulary of the same kind gets the
family's special tokens added, so the template renders the exact control tokens the real model sees.

Converting a vocabulary GGUF takes 5-20 s, so converted tokenizer folders are kept under
`$LMTUNE_TEST_CACHE_DIR` (default `~/.cache/lmtune-tests`), keyed by the vocabulary file and the spec
below; models are random, 2 layers, 64 wide, built per test session in a temporary folder.

Use from tests through the fixtures in conftest.py (`family_tokenizer_dir`, `family_model_dir`) or call
`tokenizer_dir(name)` / `build_model(name, out)` directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

VOCAB_TEMPLATES = Path(__file__).resolve().parents[2] / "shared" / "data" / "llamacpp_vocab_templates"


@dataclass(frozen=True)
class TestFamily:
    """How to build one family's tiny test model."""

    vocab: str  # ggml-vocab-<vocab>.gguf
    template: str  # templates/<template>.jinja
    eos: str  # the end-of-turn token the instruct model stops on
    model_type: str  # transformers model_type
    special_tokens: tuple[str, ...] = ()  # control tokens missing from the stand-in vocabulary
    added_tokens: tuple[str, ...] = ()  # plain added tokens (Qwen3's <think>, ...)
    config: dict = field(default_factory=dict)  # family-specific config fields
    pad: str | None = None  # pad token when the vocabulary has none suitable


_QWEN_TOOLS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
_THINK = ("<think>", "</think>")
_MOE_QWEN = dict(
    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1, norm_topk_prob=True
)  # norm_topk_prob as the released Qwen3 MoE models (and as llama.cpp computes it)
_LLAMA3_ROPE = dict(
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    rope_theta=500000.0,
    max_position_embeddings=131072,
)
# Untied: Gemma ties its head to the embeddings, and a tied head on a tiny random Gemma (whose sandwich
# norms keep the layers' share of the residual small) greedily repeats "\n" whatever the prompt, which
# would make generation tests vacuous. Exporters must therefore handle an untied Gemma head too.
_GEMMA = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=64, tie_word_embeddings=False)

TEST_FAMILIES: dict[str, TestFamily] = {
    "qwen2": TestFamily("qwen2", "Qwen-Qwen2.5-7B-Instruct", "<|im_end|>", "qwen2", added_tokens=_QWEN_TOOLS),
    "qwen3": TestFamily(
        "qwen2",
        "Qwen-Qwen3-0.6B",
        "<|im_end|>",
        "qwen3",
        added_tokens=_QWEN_TOOLS + _THINK,
        config={"head_dim": 16},
    ),
    "qwen3_moe": TestFamily(
        "qwen2",
        "Qwen-Qwen3-0.6B",
        "<|im_end|>",
        "qwen3_moe",
        added_tokens=_QWEN_TOOLS + _THINK,
        config={"head_dim": 16, **_MOE_QWEN},
    ),
    "llama3": TestFamily(
        "llama-bpe",
        "meta-llama-Llama-3.1-8B-Instruct",
        "<|eot_id|>",
        "llama",
        special_tokens=("<|eom_id|>", "<|python_tag|>"),
        config=_LLAMA3_ROPE,
        pad="<|finetune_right_pad_id|>",
    ),
    "mistral": TestFamily(
        "llama-spm",
        "mistralai-Mistral-Nemo-Instruct-2407",
        "</s>",
        "mistral",
        special_tokens=("[INST]", "[/INST]"),
    ),
    "mixtral": TestFamily(
        "llama-spm",
        "mistralai-Mistral-Nemo-Instruct-2407",
        "</s>",
        "mixtral",
        special_tokens=("[INST]", "[/INST]"),
        config=dict(num_local_experts=4, num_experts_per_tok=2),
    ),
    "gemma2": TestFamily(
        "llama-spm",
        "google-gemma-2-2b-it",
        "<end_of_turn>",
        "gemma2",
        special_tokens=("<start_of_turn>", "<end_of_turn>"),
        config=_GEMMA,
    ),
    "gemma3": TestFamily(
        "llama-spm",
        "google-gemma-2-2b-it",
        "<end_of_turn>",
        "gemma3_text",
        special_tokens=("<start_of_turn>", "<end_of_turn>"),
        config=_GEMMA,
    ),
    "phi3": TestFamily("phi-3", "microsoft-Phi-3.5-mini-instruct", "<|end|>", "phi3"),
    "deepseek": TestFamily(
        "deepseek-llm",
        "deepseek-ai-DeepSeek-R1-Distill-Llama-8B",
        "<｜end▁of▁sentence｜>",
        "llama",
        special_tokens=("<｜User｜>", "<｜Assistant｜>"),
        added_tokens=_THINK,
    ),
    # Template-only families (masking tests): stand-in vocabularies with the family's control tokens.
    "smollm3": TestFamily(
        "llama-bpe",
        "HuggingFaceTB-SmolLM3-3B",
        "<|im_end|>",
        "llama",
        special_tokens=("<|im_start|>", "<|im_end|>"),
        added_tokens=_THINK,
    ),
    "granite": TestFamily(
        "llama-bpe",
        "ibm-granite-granite-3.3-2B-Instruct",
        "<|end_of_text|>",
        "granite",
        special_tokens=("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>", "<|tool_call|>"),
    ),
}

# The families a fine-tuning user brings (trained, merged, exported in tests); the others are template-only.
MODEL_FAMILIES = (
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "llama3",
    "mistral",
    "mixtral",
    "gemma2",
    "gemma3",
    "phi3",
    "deepseek",
)

TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)


def _cache_root() -> Path:
    return Path(os.environ.get("LMTUNE_TEST_CACHE_DIR", Path.home() / ".cache" / "lmtune-tests"))


def _spec_key(name: str) -> str:
    fam = TEST_FAMILIES[name]
    vocab = VOCAB_TEMPLATES / "vocab" / f"ggml-vocab-{fam.vocab}.gguf"
    template = VOCAB_TEMPLATES / "templates" / f"{fam.template}.jinja"
    h = hashlib.sha256(json.dumps(asdict(fam), sort_keys=True).encode())
    for f in (vocab, template):
        h.update(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def tokenizer_dir(name: str) -> Path:
    """The family's tokenizer (with chat template and end-of-turn eos) as a normal HF tokenizer folder."""
    out = _cache_root() / "tokenizers" / f"{name}-{_spec_key(name)}"
    if (out / "tokenizer_config.json").exists():
        return out
    from transformers import AutoTokenizer

    fam = TEST_FAMILIES[name]
    tok = AutoTokenizer.from_pretrained(VOCAB_TEMPLATES / "vocab", gguf_file=f"ggml-vocab-{fam.vocab}.gguf")
    if fam.special_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(fam.special_tokens)})
    if fam.added_tokens:
        tok.add_tokens(list(fam.added_tokens))
    tok.chat_template = (VOCAB_TEMPLATES / "templates" / f"{fam.template}.jinja").read_text()
    tok.eos_token = fam.eos
    if fam.pad is not None and fam.pad in tok.get_vocab():
        tok.pad_token = fam.pad
    elif tok.pad_token is None:
        tok.pad_token = tok.unk_token or fam.eos
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(tmp)
    tmp.rename(out) if not out.exists() else shutil.rmtree(tmp)
    return out


def tiny_config(name: str, vocab_size: int, **overrides):
    """A 2-layer, 64-wide config of the family with the given vocabulary size."""
    from transformers import AutoConfig

    fam = TEST_FAMILIES[name]
    kwargs = {**TINY_SHAPE, **fam.config, "vocab_size": vocab_size, **overrides}
    return AutoConfig.for_model(fam.model_type, **kwargs)


def build_model(name: str, out: Path, *, seed: int = 0) -> Path:
    """Save a tiny random model of the family with its tokenizer into `out` (a model folder).

    Embeddings and an untied output head are drawn at a larger scale than the default init, so greedy
    replies are long and depend on the prompt (see conftest.tiny_model_dir for why that matters).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok_dir = tokenizer_dir(name)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = tiny_config(
        name,
        len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.copy_(torch.randn(emb.shape, generator=gen) * 0.5)
        if not config.tie_word_embeddings:
            head = model.get_output_embeddings().weight
            head.copy_(torch.randn(head.shape, generator=gen) * 0.5)
    out = Path(out)
    model.save_pretrained(out)
    for f in tok_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out
