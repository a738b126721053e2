"""A transformers Llama / Qwen2 model -> one GGUF file for llama.cpp and Ollama, in pure Python.

We write what llama.cpp's `convert_hf_to_gguf.py` writes for these architectures (tensor names,
the q/k row permutation Llama needs, metadata keys, the tokenizer), using the `gguf` package that
llama.cpp publishes, so no llama.cpp checkout or build is needed. Quantization (q8_0, q4_0) is that
package's reference implementation of llama.cpp's block formats.

The tensors are planned first (name, type, size) and then streamed into the file one at a time,
so at most one tensor's converted copy is in memory; the file is written under a temporary name
and renamed at the end, so a failed export never leaves a half-written .gguf behind.

`verify_gguf` (gguf_verify.py) reads the file back with transformers' independent GGUF reader and
compares logits, tokens and greedy text; `write_modelfile` (modelfile.py) writes Ollama's Modelfile.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError
from lmtune.export.gguf_arch import (
    SUPPORTED_MODEL_TYPES,
    arch_notes,
    architecture,
    gguf_tensor_names,
    head_dim,
    is_tied,
    rope_parameters,
    vocab_rows,
)
from lmtune.export.gguf_verify import QUANT_TOLERANCES, verify_gguf
from lmtune.export.gguf_vocab import add_vocab, vocab_metadata
from lmtune.export.modelfile import write_modelfile

__all__ = [
    "QUANT_TYPES",
    "QUANT_TOLERANCES",
    "SUPPORTED_MODEL_TYPES",
    "export_gguf",
    "verify_gguf",
    "write_modelfile",
]

QUANT_TYPES = ("f16", "bf16", "q8_0", "q4_0", "f32")
_PERMUTED_ARCHS = {"llama"}  # rotary in interleaved-pair layout: q/k rows are permuted for llama.cpp
_F16_MAX = 65504.0


@dataclass
class _Planned:
    """One tensor of the file: where its values come from and how they are stored."""

    gguf_name: str
    source: Any  # the torch tensor (a parameter), read only when written
    ggml_type: Any  # gguf.GGMLQuantizationType
    permute_heads: int | None  # heads to un-interleave q/k rows over, or None


def export_gguf(
    model: Any,
    tokenizer: Any,
    out_path: str | Path,
    *,
    quant: str = "f16",
    name: str | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write `model` (a plain, merged transformers causal LM) and `tokenizer` as a GGUF file.

    `quant`: f16 | bf16 | q8_0 | q4_0 (| f32). Norms and other 1-D tensors stay f32 as llama.cpp
    keeps them; under q4_0 the output head stays q8_0, since it decides every token and llama.cpp's
    own q4_0 mix keeps it at higher precision too. A matrix whose rows do not split into whole
    quantization blocks falls back to f16. Every such decision is appended to `notes` when given,
    else printed to stderr.
    """
    import gguf

    quant = _check_quant(quant)
    arch = architecture(model)
    config = model.config
    out = Path(out_path).expanduser()
    if out.suffix.lower() != ".gguf":
        raise ConfigError(f"The output file {out} should end in .gguf, so llama.cpp and Ollama recognise it.")
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; pass the path of the .gguf file to write.")
    said: list[str] = [] if notes is None else notes
    said.extend(arch_notes(config))

    meta = vocab_metadata(
        tokenizer,
        vocab_rows(model),
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    )
    plan = _plan_tensors(model, arch, quant, said)

    writer = gguf.GGUFWriter(path=None, arch=arch)
    _add_model_metadata(writer, model, quant, name)
    add_vocab(writer, meta)
    for item in plan:
        shape, dtype, nbytes = _stored_layout(item)
        writer.add_tensor_info(item.gguf_name, shape, dtype, nbytes, raw_dtype=_raw_type(item.ggml_type))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}-{time.monotonic_ns()}")
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for data in _converted(plan):
            writer.write_tensor_data(data)
        writer.close()
        os.replace(tmp, out)
    finally:
        writer.close()
        if tmp.exists():
            tmp.unlink()
    if notes is None:
        for line in said:
            print(f"GGUF export: {line}", file=sys.stderr, flush=True)
    return out


def _check_quant(quant: str) -> str:
    value = str(quant).strip().lower()
    if value not in QUANT_TYPES:
        raise ConfigError(f"Unknown GGUF quant '{quant}'. Choose one of: {', '.join(QUANT_TYPES)}.")
    return value


def _add_model_metadata(writer: Any, model: Any, quant: str, name: str | None) -> None:
    """general.* and the architecture's hyper-parameters, as llama.cpp's converter writes them."""
    import gguf

    config = model.config
    heads = int(config.num_attention_heads)
    writer.add_type("model")
    writer.add_name(name or _default_name(config))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or heads))
    writer.add_rope_freq_base(float(rope_parameters(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(vocab_rows(model))
    width = head_dim(config)
    writer.add_rope_dimension_count(width)
    if width != config.hidden_size // heads:  # llama.cpp derives it otherwise
        writer.add_key_length(width)
        writer.add_value_length(width)
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    }
    writer.add_file_type(int(file_types[quant]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _default_name(config: Any) -> str:
    source = str(getattr(config, "_name_or_path", "") or "").rstrip("/")
    return Path(source).name or "model"


def _plan_tensors(model: Any, arch: str, quant: str, notes: list[str]) -> list[_Planned]:
    """Every parameter under its GGUF name with its storage type, in state-dict order."""
    config = model.config
    tied = is_tied(model)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    names = gguf_tensor_names(model)
    plan: list[_Planned] = []
    fallbacks: list[str] = []
    for hf_name, tensor in model.state_dict().items():
        if hf_name not in names:
            continue
        gguf_name = names[hf_name]
        head = gguf_name == "output.weight" or (tied and gguf_name == "token_embd.weight")
        ggml_type = _storage_type(gguf_name, tensor, quant, head, fallbacks)
        permute = None
        if arch in _PERMUTED_ARCHS and ".attn_q." in gguf_name:
            permute = heads
        elif arch in _PERMUTED_ARCHS and ".attn_k." in gguf_name:
            permute = kv_heads
        plan.append(_Planned(gguf_name, tensor, ggml_type, permute))
    if quant == "q4_0":
        notes.append(f"the output head ({'token_embd' if tied else 'output'}.weight) is stored as q8_0.")
    if fallbacks:
        notes.append(
            f"{len(fallbacks)} tensor(s) stored in higher precision than {quant}: "
            + "; ".join(fallbacks[:6])
            + (" ..." if len(fallbacks) > 6 else "")
        )
    return plan


def _storage_type(gguf_name: str, tensor: Any, quant: str, head: bool, fallbacks: list[str]) -> Any:
    """The ggml type for one tensor: f32 for 1-D tensors and norms, else `quant` where it fits."""
    import gguf

    types = gguf.GGMLQuantizationType
    if tensor.dim() <= 1 or gguf_name.endswith("_norm.weight"):
        return types.F32
    wanted = {"f32": types.F32, "f16": types.F16, "bf16": types.BF16, "q8_0": types.Q8_0, "q4_0": types.Q4_0}[
        quant
    ]
    if quant == "q4_0" and head:
        wanted = types.Q8_0
    if wanted in (types.F16, types.Q8_0, types.Q4_0) and float(tensor.detach().abs().max()) > _F16_MAX:
        fallbacks.append(f"{gguf_name} as f32 (values beyond f16's range)")
        return types.F32
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    if tensor.shape[-1] % block:
        fallbacks.append(f"{gguf_name} as f16 (row of {tensor.shape[-1]} is not a multiple of {block})")
        return types.F16
    return wanted


def _raw_type(ggml_type: Any) -> Any:
    """The writer infers F32 / F16 from the array's dtype; block and bf16 types are named."""
    import gguf

    return None if ggml_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else ggml_type


def _stored_layout(item: _Planned) -> tuple[tuple[int, ...], Any, int]:
    """(shape as the writer takes it, numpy dtype, bytes) without converting any data."""
    import gguf
    import numpy as np

    shape = tuple(int(d) for d in item.source.shape)
    if item.ggml_type == gguf.GGMLQuantizationType.F32:
        return shape, np.float32, 4 * prod(shape)
    if item.ggml_type == gguf.GGMLQuantizationType.F16:
        return shape, np.float16, 2 * prod(shape)
    byte_shape = gguf.quant_shape_to_byte_shape(shape, item.ggml_type)
    return byte_shape, np.uint8, prod(byte_shape)


def _converted(plan: list[_Planned]) -> Iterator[Any]:
    """Each planned tensor as the numpy array to write, one at a time, in plan order."""
    import gguf

    for item in plan:
        data = item.source.detach().to("cpu").float().numpy()
        if item.permute_heads is not None:
            data = permute_rotary_rows(data, item.permute_heads)
        yield gguf.quants.quantize(data, item.ggml_type)


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
