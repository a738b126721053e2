"""What the GGUF export knows about each architecture, as data: one table per concern.

- ARCHS: transformers model_type -> how llama.cpp runs it (its architecture name, whether q/k rows
  are permuted, the Gemma "+1" norm convention, whether an untied head can be loaded, whether
  transformers' own GGUF reader rebuilds it for the exact weight check).
- EXTRA_KEYS: architecture-specific metadata, (gguf writer method, config field).
- REFUSALS: configurations llama.cpp would load but run differently, refused up front with why.

Tensor names come from the `gguf` package's TensorNameMap (tensors.py), the pre-tokenizer name from
the tokenizer itself (vocab.py); nothing here re-types llama.cpp's tensor names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmtune.errors import ConfigError


@dataclass(frozen=True)
class GgufArch:
    """How llama.cpp runs one transformers model_type."""

    name: str  # general.architecture, also gguf.MODEL_ARCH[name.upper()] after the table below
    model_arch: str  # gguf.MODEL_ARCH member name (tensor-name map)
    permute_qk: bool = False  # llama: rotary on interleaved pairs, so q/k rows are permuted
    norm_shift: float = 0.0  # Gemma's RMSNorm multiplies by (1 + w); llama.cpp stores 1 + w
    untied_head: bool = True  # llama.cpp loads output.weight (False: it always reuses token_embd)
    transformers_readback: bool = False  # transformers' GGUF reader rebuilds this arch exactly


ARCHS: dict[str, GgufArch] = {
    "llama": GgufArch("llama", "LLAMA", permute_qk=True, transformers_readback=True),
    "mistral": GgufArch("llama", "LLAMA", permute_qk=True, transformers_readback=True),
    "mixtral": GgufArch("llama", "LLAMA", permute_qk=True),
    "qwen2": GgufArch("qwen2", "QWEN2", transformers_readback=True),
    "qwen3": GgufArch("qwen3", "QWEN3"),
    "qwen3_moe": GgufArch("qwen3moe", "QWEN3MOE"),
    "gemma2": GgufArch("gemma2", "GEMMA2", norm_shift=1.0, untied_head=False),
    "gemma3_text": GgufArch("gemma3", "GEMMA3", norm_shift=1.0),
    "phi3": GgufArch("phi3", "PHI3"),
}
SUPPORTED_MODEL_TYPES = {key: value.name for key, value in ARCHS.items()}


def _layer_pattern(config: Any) -> list[bool] | None:
    """Per layer: True where it attends through the sliding window (transformers' layer_types)."""
    types = getattr(config, "layer_types", None)
    return [kind == "sliding_attention" for kind in types] if types else None


def _swa_rope_base(config: Any) -> float | None:
    params = getattr(config, "rope_parameters", None) or {}
    local = params.get("sliding_attention") if isinstance(params, dict) else None
    return float(local["rope_theta"]) if local else None


def _experts(config: Any) -> int | None:
    return getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None)


# Architecture-specific metadata: (GGUFWriter method, value from the config); None values are skipped.
EXTRA_KEYS: dict[str, list[tuple[str, Callable[[Any], Any]]]] = {
    "llama": [
        ("add_expert_count", _experts),
        ("add_expert_used_count", lambda c: getattr(c, "num_experts_per_tok", None) if _experts(c) else None),
    ],
    "qwen3moe": [
        ("add_expert_count", _experts),
        ("add_expert_used_count", lambda c: c.num_experts_per_tok),
        ("add_expert_feed_forward_length", lambda c: c.moe_intermediate_size),
    ],
    "gemma2": [
        ("add_attn_logit_softcapping", lambda c: c.attn_logit_softcapping),
        ("add_final_logit_softcapping", lambda c: c.final_logit_softcapping),
        ("add_sliding_window", lambda c: c.sliding_window),
        ("add_sliding_window_pattern", _layer_pattern),
    ],
    "gemma3": [
        ("add_final_logit_softcapping", lambda c: c.final_logit_softcapping),
        ("add_sliding_window", lambda c: c.sliding_window),
        ("add_sliding_window_pattern", _layer_pattern),
        ("add_rope_freq_base_swa", _swa_rope_base),
    ],
}


def _refusals(model_type: str, config: Any) -> str | None:
    """Why llama.cpp would run this config differently from transformers, or None."""
    rope = rope_parameters(config)
    kind = rope.get("rope_type", "default") or "default"
    if kind not in ("default", "llama3"):
        return f"'{kind}' RoPE scaling (llama.cpp's GGUF export here writes plain and llama3 RoPE only)"
    if kind == "llama3" and ARCHS[model_type].name != "llama":
        return "llama3 RoPE scaling outside the Llama architecture"
    if model_type == "qwen3_moe" and not getattr(config, "norm_topk_prob", True):
        return "norm_topk_prob=False (llama.cpp's qwen3moe always renormalises the top-k expert weights)"
    if model_type == "qwen3_moe" and (
        getattr(config, "mlp_only_layers", None) or config.decoder_sparse_step != 1
    ):
        return "dense layers between the MoE layers (llama.cpp's qwen3moe expects every layer to be MoE)"
    if model_type in ("gemma2", "gemma3_text"):
        scalar = getattr(config, "query_pre_attn_scalar", None)
        if scalar is not None and int(scalar) != head_dim(config):
            return f"query_pre_attn_scalar {scalar} != head_dim {head_dim(config)} (llama.cpp scales by head_dim)"
    if model_type == "phi3" and rope.get("partial_rotary_factor", 1.0) not in (None, 1.0):
        return "partial rotary embeddings"
    if model_type not in ("qwen2",) and (
        getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)
    ):
        return "attention or MLP biases (llama.cpp's graph for this architecture has none)"
    return None


def architecture(model: Any) -> GgufArch:
    """llama.cpp's description of `model`; a ConfigError naming the reason for anything else."""
    if hasattr(model, "peft_config"):
        raise ConfigError(
            "This model still has adapters attached (a PEFT model). Merge them into the base first "
            "(lmtune merge, or model.merge_and_unload()), then export the merged model."
        )
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        raise ConfigError(
            "This model is loaded quantized (bitsandbytes / GGUF packed weights). Load it in full precision "
            "(dtype float32 or bfloat16) to export it; the GGUF quant option does the quantizing."
        )
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS or not hasattr(model, "lm_head"):
        arch = ", ".join(getattr(config, "architectures", None) or [type(model).__name__])
        supported = ", ".join(ARCHS)
        raise ConfigError(
            f"GGUF export does not support the architecture {arch} (model_type '{model_type}'). "
            f"Supported causal LMs (model_type): {supported}."
        )
    reason = _refusals(model_type, config)
    if reason:
        raise ConfigError(
            f"This {model_type} model has {reason}, so llama.cpp would answer differently from transformers; "
            "lmtune does not export it to GGUF."
        )
    arch = ARCHS[model_type]
    if not arch.untied_head and not is_tied(model):
        raise ConfigError(
            f"This {model_type} model has an output head separate from its input embedding, but llama.cpp's "
            f"{arch.name} always uses the embedding as the head (it would ignore or reject output.weight). "
            "Tie the head (tie_word_embeddings=True, as the released Gemma 2 models are) before exporting."
        )
    return arch


def arch_notes(config: Any) -> list[str]:
    """Things llama.cpp will do differently from transformers for this config, said up front."""
    if _layer_pattern(config) is not None:  # written per layer (Gemma): llama.cpp applies the window
        return []
    window = getattr(config, "sliding_window", None)
    context = getattr(config, "max_position_embeddings", None)
    uses_window = getattr(config, "use_sliding_window", True)
    if window and uses_window and context and window < context:
        return [
            f"the model's sliding attention window ({window} tokens) is not written; llama.cpp attends to the "
            f"whole context, so answers can differ beyond {window} tokens."
        ]
    return []


def rope_parameters(config: Any) -> dict[str, Any]:
    """rope type and theta: transformers 5 keeps them in `rope_parameters` (per layer type for
    Gemma 3: the full-attention one is the model's base), older configs flat."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" not in params and params:  # per layer type
        params = params.get("full_attention") or next(iter(params.values()))
    params = dict(params or {})
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        for key, value in scaling.items():
            params.setdefault(key, value)
        params.setdefault("rope_type", scaling.get("rope_type", scaling.get("type")))
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


def head_dim(config: Any) -> int:
    """Width of one attention head (configs may state it, e.g. Mistral Nemo, or leave it derived)."""
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def vocab_rows(model: Any) -> int:
    """Rows of the input embedding: the GGUF vocabulary must have exactly this many tokens."""
    return int(model.get_input_embeddings().weight.shape[0])


def is_tied(model: Any) -> bool:
    """Whether the output head is the input embedding (then the GGUF holds no output.weight)."""
    out = model.get_output_embeddings()
    embedding = model.get_input_embeddings().weight
    return out is None or out.weight is embedding or out.weight.data_ptr() == embedding.data_ptr()
