"""Which tensors a GGUF holds, under llama.cpp's names, and how each is derived from the model.

Names come from the `gguf` package's TensorNameMap for the architecture (llama.cpp publishes it
with its converter), so nothing here re-types a tensor name. What the map does not cover is the
layout: the transforms below turn a transformers parameter into the array llama.cpp reads.

transformers 5 keeps a MoE layer's experts fused, llama.cpp wants gate and up apart:

    experts.gate_up_proj  [E, 2*ff, hidden]        ffn_gate_exps [E, ff, hidden]  (rows 0..ff-1)
                          ├── rows 0..ff-1   ──>
                          └── rows ff..2ff-1 ──>   ffn_up_exps   [E, ff, hidden]
    experts.down_proj     [E, hidden, ff]    ──>   ffn_down_exps [E, hidden, ff]

(numpy order; ggml lists the same shapes reversed). Phi-3's fused qkv_proj and gate_up_proj are
read by llama.cpp fused (attn_qkv, ffn_up holding gate then up), so they pass through as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmtune.errors import ModelError
from lmtune.export.gguf.arch import GgufArch, head_dim, is_tied, rope_parameters


@dataclass
class TensorSource:
    """One tensor of the file: its GGUF name, numpy shape, and how to compute its float32 values."""

    gguf_name: str
    shape: tuple[int, ...]
    load: Callable[[], Any]  # -> float32 numpy array of `shape`, computed only when written
    keep_f32: bool = False  # norms, the MoE router, rope factors: llama.cpp keeps them f32


def name_map(arch: GgufArch, layers: int) -> Any:
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.model_arch], layers)


def gguf_name(names: Any, hf_name: str) -> str | None:
    """`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight` (None if unmapped)."""
    base, _, suffix = hf_name.rpartition(".")
    if suffix in ("weight", "bias"):
        mapped = names.get_name(base)
        return f"{mapped}.{suffix}" if mapped else None
    mapped = names.get_name(hf_name)  # fused expert parameters have no .weight suffix
    return f"{mapped}.weight" if mapped else None


def tensor_sources(model: Any, arch: GgufArch) -> list[TensorSource]:
    """Every tensor the file holds, in state-dict order (plus llama3's rope factors at the end)."""
    config = model.config
    names = name_map(arch, int(config.num_hidden_layers))
    tied = is_tied(model)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    out: list[TensorSource] = []
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent
        if hf_name.endswith("experts.gate_up_proj"):
            out.extend(_split_gate_up(names, hf_name, tensor))
            continue
        target = gguf_name(names, hf_name)
        if target is None:
            raise ModelError(f"internal error: no GGUF name for the tensor '{hf_name}' ({arch.name}).")
        permute = None
        if arch.permute_qk and ".attn_q." in target:
            permute = heads
        elif arch.permute_qk and ".attn_k." in target:
            permute = kv_heads
        shift = arch.norm_shift if target.endswith("norm.weight") else 0.0
        keep = tensor.dim() <= 1 or target.endswith("_norm.weight") or ".ffn_gate_inp." in target
        out.append(TensorSource(target, tuple(tensor.shape), _loader(tensor, permute, shift), keep))
    factors = llama3_rope_factors(config) if arch.name == "llama" else None
    if factors is not None:
        import gguf

        rope_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        out.append(TensorSource(rope_name, (len(factors),), lambda: factors, keep_f32=True))
    return out


def hf_to_gguf_names(model: Any, arch: GgufArch) -> dict[str, str]:
    """{parameter name: GGUF name} for the one-to-one tensors (what transformers' reader maps back)."""
    names = name_map(arch, int(model.config.num_hidden_layers))
    tied = is_tied(model)
    result = {}
    for hf_name in model.state_dict():
        if tied and hf_name == "lm_head.weight":
            continue
        mapped = gguf_name(names, hf_name)
        if mapped is not None:
            result[hf_name] = mapped
    return result


def _loader(tensor: Any, permute: int | None, shift: float) -> Callable[[], Any]:
    def load() -> Any:
        data = tensor.detach().to("cpu").float().numpy()
        if permute is not None:
            data = permute_rotary_rows(data, permute)
        return data + shift if shift else data

    return load


def _split_gate_up(names: Any, hf_name: str, tensor: Any) -> list[TensorSource]:
    """transformers' fused [E, 2*ff, hidden] expert gate+up as llama.cpp's two stacks (gate first,
    as transformers' `chunk(2)` reads it)."""
    prefix = hf_name.removesuffix("gate_up_proj")
    experts, double, hidden = (int(d) for d in tensor.shape)
    ff = double // 2
    parts = []
    for index, part in enumerate(("gate_proj", "up_proj")):
        target = gguf_name(names, prefix + part)
        if target is None:
            raise ModelError(f"internal error: no GGUF name for the experts' {part} of '{hf_name}'.")
        rows = slice(index * ff, (index + 1) * ff)
        parts.append(
            TensorSource(
                target,
                (experts, ff, hidden),
                lambda rows=rows: tensor[:, rows, :].detach().to("cpu").float().numpy(),
            )
        )
    return parts


def llama3_rope_factors(config: Any) -> Any:
    """llama.cpp's `rope_freqs` for llama3 RoPE scaling (None for plain RoPE): one divisor per
    rotary frequency, the same piecewise rule transformers applies to its inverse frequencies
    (high frequencies kept, low ones divided by `factor`, a smooth blend between)."""
    import numpy as np

    rope = rope_parameters(config)
    if rope.get("rope_type") != "llama3":
        return None
    dim = head_dim(config)
    base = float(rope["rope_theta"])
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    wavelen = 2 * math.pi / freqs
    smooth = (old_context / wavelen - low) / (high - low)
    blended = 1.0 / ((1 - smooth) / factor + smooth)
    factors = np.where(
        wavelen < old_context / high, 1.0, np.where(wavelen > old_context / low, factor, blended)
    )
    return factors.astype(np.float32)


def permute_rotary_rows(weights: Any, heads: int) -> Any:
    """Reorder q/k rows from transformers' rotary layout to llama.cpp's (llama arch only).

    transformers rotates the two halves of each head ([x0..x63], [x64..x127]) against each other;
    llama.cpp's llama rotates adjacent pairs (x0, x1), (x2, x3) ... . Within each head, row i of the
    first half and row i of the second half become rows 2i and 2i+1. Same rows, same maths:
    transformers' GGUF reader applies the inverse. Works for a weight (rows x in) and a bias (rows).
    """
    rows = weights.shape[0]
    half = rows // heads // 2
    return weights.reshape(heads, 2, half, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)
