"""A transformers causal LM -> one GGUF file for llama.cpp and Ollama, in pure Python.

We write what llama.cpp loads for the architectures in arch.py (tensor names from the `gguf`
package's map, the layouts in tensors.py, metadata keys, the tokenizer in vocab.py), so no
llama.cpp checkout or build is needed. Quantization (q8_0, q4_0) is that package's reference
implementation of llama.cpp's block formats; the k-quants are llama.cpp's own quantizer run on an
f16 file written here (llamacpp.py, needs llama-cpp-python).

The tensors are planned first (name, type, size) and then streamed into the file one at a time,
so at most one tensor's converted copy is in memory; the file is written under a temporary name
and renamed at the end, so a failed export never leaves a half-written .gguf behind.

`verify_gguf` (verify.py) runs the file in llama.cpp and, where transformers' GGUF reader rebuilds
the architecture, reads it back with that too; `write_modelfile` (modelfile.py) writes Ollama's
Modelfile.
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
from lmtune.export.gguf.arch import (
    EXTRA_KEYS,
    arch_notes,
    architecture,
    head_dim,
    rope_parameters,
    vocab_rows,
)
from lmtune.export.gguf.tensors import TensorSource, tensor_sources
from lmtune.export.gguf.vocab import add_vocab, vocab_metadata

BLOCK_QUANTS = ("f16", "bf16", "q8_0", "q4_0", "f32")  # written here, in pure Python
K_QUANTS = ("q4_k_m", "q5_k_m", "q6_k")  # llama.cpp's own quantizer, from an f16 file we wrote
QUANT_TYPES = BLOCK_QUANTS + K_QUANTS
_F16_MAX = 65504.0


@dataclass
class _Planned:
    """One tensor of the file: where its values come from and how they are stored."""

    source: TensorSource
    ggml_type: Any  # gguf.GGMLQuantizationType

    @property
    def gguf_name(self) -> str:
        return self.source.gguf_name


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

    `quant`: f16 | bf16 | q8_0 | q4_0 (| f32), or a k-quant (q4_k_m | q5_k_m | q6_k: llama.cpp's
    quantizer, see llamacpp.py). Norms and other 1-D tensors stay f32 as llama.cpp
    keeps them; under q4_0 the output head stays q8_0, since it decides every token and llama.cpp's
    own q4_0 mix keeps it at higher precision too. A matrix whose rows do not split into whole
    quantization blocks falls back to f16. Every such decision is appended to `notes` when given,
    else printed to stderr.
    """
    import gguf

    quant = _check_quant(quant)
    if quant in K_QUANTS:
        from lmtune.export.gguf.llamacpp import export_k_quant

        return export_k_quant(model, tokenizer, out_path, quant=quant, name=name, notes=notes)
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

    writer = gguf.GGUFWriter(path=None, arch=arch.name)
    _add_model_metadata(writer, model, arch.name, quant, name)
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


def _add_model_metadata(writer: Any, model: Any, arch: str, quant: str, name: str | None) -> None:
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
    for method, value in EXTRA_KEYS.get(arch, []):
        got = value(config)
        if got is not None:
            getattr(writer, method)(got if isinstance(got, list) else type(got)(got))
    writer.add_file_type(int(file_types[quant]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _default_name(config: Any) -> str:
    source = str(getattr(config, "_name_or_path", "") or "").rstrip("/")
    return Path(source).name or "model"


def _plan_tensors(model: Any, arch: Any, quant: str, notes: list[str]) -> list[_Planned]:
    """Every tensor under its GGUF name with its storage type, in state-dict order."""
    plan: list[_Planned] = []
    fallbacks: list[str] = []
    sources = tensor_sources(model, arch)
    names = [source.gguf_name for source in sources]
    head_name = "output.weight" if "output.weight" in names else "token_embd.weight"
    for source in sources:
        ggml_type = _storage_type(source, quant, source.gguf_name == head_name, fallbacks)
        plan.append(_Planned(source, ggml_type))
    if quant == "q4_0":
        notes.append(f"the output head ({head_name}) is stored as q8_0.")
    if fallbacks:
        notes.append(
            f"{len(fallbacks)} tensor(s) stored in higher precision than {quant}: "
            + "; ".join(fallbacks[:6])
            + (" ..." if len(fallbacks) > 6 else "")
        )
    return plan


def _storage_type(source: TensorSource, quant: str, head: bool, fallbacks: list[str]) -> Any:
    """The ggml type for one tensor: f32 for 1-D tensors, norms and routers, else `quant` where it fits."""
    import gguf

    types = gguf.GGMLQuantizationType
    gguf_name, shape = source.gguf_name, source.shape
    if source.keep_f32 or len(shape) <= 1:
        return types.F32
    wanted = {"f32": types.F32, "f16": types.F16, "bf16": types.BF16, "q8_0": types.Q8_0, "q4_0": types.Q4_0}[
        quant
    ]
    if quant == "q4_0" and head:
        wanted = types.Q8_0
    if wanted in (types.F16, types.Q8_0, types.Q4_0) and float(abs(source.load()).max()) > _F16_MAX:
        fallbacks.append(f"{gguf_name} as f32 (values beyond f16's range)")
        return types.F32
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    if shape[-1] % block:
        fallbacks.append(f"{gguf_name} as f16 (row of {shape[-1]} is not a multiple of {block})")
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
        yield gguf.quants.quantize(item.source.load(), item.ggml_type)
