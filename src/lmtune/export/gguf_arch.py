"""What the GGUF export knows about a model's architecture: which ones it writes, their
hyper-parameters as llama.cpp names them, and the tensor-name map. Shared by the writer and by the
checks that read the file back, so both sides agree on one definition.
"""

from __future__ import annotations

from typing import Any

from lmtune.errors import ConfigError, ModelError

# transformers model_type -> llama.cpp architecture. Mistral runs as "llama" in llama.cpp, as its
# converter writes it (the sliding window is not kept; see arch_notes).
SUPPORTED_MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}


def architecture(model: Any) -> str:
    """llama.cpp's architecture name for `model`; a ConfigError for anything else."""
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
    supported = ", ".join(f"{key} ({SUPPORTED_MODEL_TYPES[key]})" for key in SUPPORTED_MODEL_TYPES)
    if model_type not in SUPPORTED_MODEL_TYPES or not hasattr(model, "lm_head"):
        arch = ", ".join(getattr(config, "architectures", None) or [type(model).__name__])
        raise ConfigError(
            f"GGUF export does not support the architecture {arch} (model_type '{model_type}'). "
            f"Supported: causal LMs of model_type {supported}; Llama covers SmolLM and Mistral-shaped models."
        )
    if model_type != "qwen2" and (
        getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)
    ):
        raise ConfigError(
            "This Llama-family model has attention or MLP biases, which lmtune's GGUF export does not write yet "
            "(transformers' GGUF reader would drop them, so the export could not be verified). Convert it "
            "with llama.cpp's convert_hf_to_gguf.py instead."
        )
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", None):
        raise ConfigError(
            f"This model uses '{rope['rope_type']}' RoPE scaling, which lmtune's GGUF export does not write "
            "yet (only plain RoPE). Convert it with llama.cpp's convert_hf_to_gguf.py instead."
        )
    return SUPPORTED_MODEL_TYPES[model_type]


def arch_notes(config: Any) -> list[str]:
    """Things llama.cpp will do differently from transformers for this config, said up front."""
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
    """rope type and theta: transformers 5 keeps them in `rope_parameters`, older configs flat."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" not in params and params:  # per layer type: take any
        params = next(iter(params.values()))
    params = dict(params or {})
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        params.setdefault("rope_type", scaling.get("rope_type", scaling.get("type")))
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


def head_dim(config: Any) -> int:
    """Width of one attention head (configs may state it, e.g. Mistral Nemo, or leave it derived)."""
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def vocab_rows(model: Any) -> int:
    """Rows of the input embedding: the GGUF vocabulary must have exactly this many tokens."""
    return int(model.get_input_embeddings().weight.shape[0])


def gguf_tensor_names(model: Any) -> dict[str, str]:
    """{transformers parameter name: GGUF tensor name}, as llama.cpp names them (gguf's own map).

    A tied output head has no entry: llama.cpp reuses token_embd when output.weight is absent.
    """
    import gguf

    arch = architecture(model)
    config = model.config
    name_map = gguf.get_tensor_name_map(
        gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers
    )
    tied = is_tied(model)
    names: dict[str, str] = {}
    for hf_name in model.state_dict():
        if tied and hf_name == "lm_head.weight":
            continue
        base, _, suffix = hf_name.rpartition(".")
        mapped = name_map.get_name(base)
        if mapped is None or suffix not in ("weight", "bias"):
            raise ModelError(f"internal error: no GGUF name for the tensor '{hf_name}' of this {arch} model.")
        names[hf_name] = f"{mapped}.{suffix}"
    return names


def is_tied(model: Any) -> bool:
    """Whether the output head is the input embedding (then the GGUF holds no output.weight)."""
    out = model.get_output_embeddings()
    embedding = model.get_input_embeddings().weight
    return out is None or out.weight is embedding or out.weight.data_ptr() == embedding.data_ptr()
