"""Exact checks of a GGUF read back by transformers: every weight and every hyper-parameter.

Logit differences alone cannot tell a q4_0 file's honest rounding from a real mistake (an
un-permuted q/k gives differences of the same size on SmolLM2), so the weights are checked
exactly: each tensor transformers reads back must equal the source tensor passed through the
stored type's rounding (gguf's reference quantize/dequantize, llama.cpp's block formats), after
transformers' own un-permutation and renaming. The config transformers rebuilds from the metadata
must match the source's shape, rope and norm settings.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from lmtune.export.gguf.arch import architecture, head_dim, is_tied, rope_parameters, vocab_rows
from lmtune.export.gguf.tensors import hf_to_gguf_names


def file_tensor_types(path: Path) -> dict[str, int]:
    """{GGUF tensor name: ggml type id} from the file's header."""
    try:  # transformers' header reader skips the vocabulary, so it takes milliseconds
        from transformers.integrations.gguf import GgufHeader

        return dict(GgufHeader.from_file(str(path)).ggml_types)
    except (ImportError, ValueError):  # an older transformers, or a type it does not size (Q5_0 in a
        from gguf import GGUFReader  # k-quant mix): gguf's own reader parses every field (seconds)

        return {tensor.name: int(tensor.tensor_type) for tensor in GGUFReader(path).tensors}


def type_counts(types: dict[str, int]) -> dict[str, int]:
    """How many tensors the file stores in each ggml type (shows fallbacks and the f32 norms)."""
    from gguf import GGMLQuantizationType

    return dict(Counter(GGMLQuantizationType(t).name for t in types.values()))


def stored_values(data: Any, ggml_type: int) -> Any:
    """`data` (float32 numpy) as it reads back after being stored in `ggml_type`."""
    from gguf import GGMLQuantizationType, quants

    kind = GGMLQuantizationType(ggml_type)
    if kind == GGMLQuantizationType.F32:
        return data
    return quants.dequantize(quants.quantize(data, kind), kind).reshape(data.shape)


def compare_weights(types: dict[str, int], model: Any, read_model: Any) -> dict[str, Any]:
    """Each read-back parameter against the source parameter rounded as the file stores it."""
    import torch

    names = hf_to_gguf_names(model, architecture(model))
    read_state = read_model.state_dict()
    wrong: list[str] = []
    worst = 0.0
    for hf_name, tensor in model.state_dict().items():
        gguf_name = names.get(hf_name)
        if gguf_name is None:  # the tied head: checked through token_embd
            continue
        got = read_state.get(hf_name)
        if gguf_name not in types or got is None or tuple(got.shape) != tuple(tensor.shape):
            wrong.append(hf_name)
            continue
        source = tensor.detach().to("cpu", torch.float32).numpy()
        expected = torch.from_numpy(stored_values(source, types[gguf_name])).to(got.dtype)
        diff = float((got.detach().cpu().float() - expected.float()).abs().max())
        worst = max(worst, diff)
        if diff > 0:
            wrong.append(hf_name)
    unexpected = sorted(set(types) - set(names.values()))
    return {
        "weights_match": not wrong and not unexpected,
        "weights_max_abs_diff": worst,
        "weights_mismatched": (wrong + unexpected)[:10],
    }


def compare_config(model: Any, read_model: Any) -> dict[str, Any]:
    """The hyper-parameters transformers rebuilt from the metadata, against the source's."""
    source, read = model.config, read_model.config

    def fields(config: Any, owner: Any) -> dict[str, Any]:
        return {
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            "head_dim": head_dim(config),
            "max_position_embeddings": config.max_position_embeddings,
            "vocab_size": vocab_rows(owner),
            "tie_word_embeddings": is_tied(owner),
            "rope_theta": float(rope_parameters(config)["rope_theta"]),
            "rms_norm_eps": float(config.rms_norm_eps),
        }

    want, got = fields(source, model), fields(read, read_model)
    different = {}
    for key, value in want.items():
        if isinstance(value, float):  # the file stores float32
            same = abs(value - got[key]) <= 1e-6 * max(abs(value), 1e-12)
        else:
            same = value == got[key]
        if not same:
            different[key] = [value, got[key]]
    return {"config_match": not different, "config_mismatched": different}
