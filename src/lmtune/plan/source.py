"""The model a config names, read as shapes only: no weights, no torch, no transformers.

`lmtune estimate` answers in a second or two because it reads just the numbers it needs: a folder's
config.json, a run directory's base model (its marker), a hub id's config.json (huggingface_hub,
one small file), or a GGUF file's metadata. transformers' GGUF config reader parses the whole
vocabulary into Python objects (seconds for a 49k-token vocabulary); `gguf_metadata` walks the
header with `struct` and keeps the scalar keys and the tensor names.
"""

from __future__ import annotations

import functools
import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.errors import ModelError


class ConfigView:
    """A model config as attributes (what transformers' config objects also give), over a dict."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)
        self._data = dict(data)

    def get_text_config(self) -> ConfigView:
        text = self._data.get("text_config")
        return ConfigView(text) if isinstance(text, dict) else self

    def to_dict(self) -> dict[str, Any]:
        return dict(self._data)


@dataclass
class ModelSource:
    config: Any  # ConfigView (light) or a transformers config
    kind: str  # "folder" | "hub" | "gguf" | "alias-import" (alias whose GGUF is not imported yet)
    gguf: Path | None = None
    folder: Path | None = None
    method_options: dict[str, Any] | None = None  # from a previous run's marker
    ref: str = ""  # what from_pretrained takes: folder path or hub id
    trust_remote_code: bool = (
        False  # model.trust_remote_code (or the previous run's): never asked interactively
    )


def model_source(cfg: Any) -> ModelSource:
    """The model config `cfg.model.name` points at, read without loading any weight.

    An alias that was never imported is read from its GGUF (importing it would take half a minute);
    a previous run directory stands for its base model, with the options it was trained with.
    """
    from lmtune.models.aliases import ALIASES, alias_gguf_path
    from lmtune.models.resolve import alias_cache_dir, resolve_model_ref
    from lmtune.run.layout import is_run_dir, read_marker

    name = cfg.model.name
    options = None
    remote = bool(getattr(cfg.model, "trust_remote_code", False))
    if is_run_dir(name):
        marker = read_marker(name)
        name, options = marker["base_model"], marker.get("method_options")
        remote = remote or bool(marker.get("trust_remote_code"))
    key = str(name).strip().lower()
    if key in ALIASES and ALIASES[key].gguf_name:
        gguf = alias_gguf_path(name)
        cache = alias_cache_dir(name, gguf)
        if (cache / "config.json").is_file():
            return ModelSource(
                folder_config(cache), "folder", folder=cache, method_options=options, ref=str(cache)
            )
        return ModelSource(
            gguf_config(gguf), "alias-import", gguf=gguf, method_options=options, ref=str(gguf)
        )
    ref = resolve_model_ref(name, use_cache=False)
    if ref.gguf_file:
        gguf = Path(ref.path) / ref.gguf_file
        return ModelSource(gguf_config(gguf), "gguf", gguf=gguf, method_options=options, ref=str(gguf))
    if ref.kind == "hub":
        return ModelSource(
            hub_config(ref.path), "hub", method_options=options, ref=ref.path, trust_remote_code=remote
        )
    return ModelSource(
        folder_config(ref.path),
        "folder",
        folder=Path(ref.path),
        method_options=options,
        ref=ref.path,
        trust_remote_code=remote,
    )


def folder_config(path: str | Path) -> ConfigView:
    file = Path(path) / "config.json"
    return ConfigView(_read_json(str(file), _mtime(file)))


def hub_config(repo_id: str) -> ConfigView:
    """A hub model's config.json, and nothing else of the repository."""
    from huggingface_hub import hf_hub_download

    try:
        file = Path(hf_hub_download(repo_id, "config.json"))
    except Exception as err:  # offline, gated, missing: one sentence
        raise ModelError(f"Cannot read config.json of the hub model '{repo_id}': {err}") from err
    return ConfigView(_read_json(str(file), _mtime(file)))


def _mtime(file: Path) -> int:
    return file.stat().st_mtime_ns if file.exists() else 0


@functools.lru_cache(maxsize=16)
def _read_json(file: str, mtime: int) -> dict[str, Any]:
    try:
        return json.loads(Path(file).read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"Cannot read the model config {file}: {err}") from err


# -- GGUF metadata -----------------------------------------------------------------------------------
# GGUF value types (gguf.GGUFValueType): struct format of each fixed-size one; 8 string, 9 array.
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# GGUF architecture -> transformers model_type, where they differ
_GGUF_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "mistral"}


def gguf_config(path: Path) -> ConfigView:
    """A transformers-style config from a GGUF's metadata (the keys transformers maps too)."""
    meta, tensors, vocab = gguf_metadata(str(path), _mtime(path))
    arch = meta.get("general.architecture", "")

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    hidden, heads = get("embedding_length"), get("attention.head_count")
    data = {
        "model_type": _GGUF_MODEL_TYPE.get(arch, arch),
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "num_hidden_layers": get("block_count"),
        "vocab_size": get("vocab_size") or vocab,
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
    }
    if get("attention.key_length") and hidden and heads and get("attention.key_length") != hidden // heads:
        data["head_dim"] = get("attention.key_length")
    return ConfigView(data)


@functools.lru_cache(maxsize=8)
def gguf_metadata(path: str, mtime: int) -> tuple[dict[str, Any], frozenset[str], int]:
    """(scalar metadata keys, tensor names, vocabulary size) of a GGUF file, from its header only.

    Layout: magic "GGUF", version u32, tensor count u64, key count u64; each key a string (u64
    length + bytes), a type u32 and its value (an array: item type u32, count u64, items); then one
    record per tensor: name, dimension count u32, dimensions u64 each, type u32, offset u64.
    """
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != b"GGUF":
                raise ModelError(f"{path} is not a GGUF file (it does not start with 'GGUF').")
            pos = 8
            n_tensors, n_keys = struct.unpack_from("<QQ", buf, pos)
            pos += 16
            meta: dict[str, Any] = {}
            vocab = 0
            for _ in range(n_keys):
                key, pos = _string(buf, pos)
                kind = struct.unpack_from("<I", buf, pos)[0]
                value, pos, count = _value(buf, pos + 4, kind)
                if kind == _ARRAY:
                    if key == "tokenizer.ggml.tokens":
                        vocab = count
                else:
                    meta[key] = value
            names = []
            for _ in range(n_tensors):
                name, pos = _string(buf, pos)
                dims = struct.unpack_from("<I", buf, pos)[0]
                pos += 4 + 8 * dims + 4 + 8
                names.append(name)
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as err:
        raise ModelError(f"Cannot read the GGUF metadata of {path}: {err}") from err
    return meta, frozenset(names), vocab


def _string(buf: Any, pos: int) -> tuple[str, int]:
    n = struct.unpack_from("<Q", buf, pos)[0]
    return bytes(buf[pos + 8 : pos + 8 + n]).decode("utf-8"), pos + 8 + n


def _value(buf: Any, pos: int, kind: int) -> tuple[Any, int, int]:
    """(value, position after it, item count); arrays are skipped (value None)."""
    if kind == _STRING:
        text, pos = _string(buf, pos)
        return text, pos, 1
    if kind == _ARRAY:
        item, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if item in _SCALAR:
            return None, pos + count * struct.calcsize("<" + _SCALAR[item]), count
        for _ in range(count):
            _, pos, _ = _value(buf, pos, item)
        return None, pos, count
    fmt = "<" + _SCALAR[kind]
    return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt), 1


# -- the full transformers config, for the meta-model path -----------------------------------------
def transformers_config(source: ModelSource) -> Any:
    """The transformers config object (a private copy: the meta build edits it)."""
    import copy

    file = Path(str(source.ref))
    remote = source.trust_remote_code
    return copy.deepcopy(_transformers_config(source.ref, source.gguf is not None, _mtime(file), remote))


@functools.lru_cache(maxsize=8)
def _transformers_config(ref: str, is_gguf: bool, mtime: int, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    try:
        if is_gguf:
            path = Path(ref)
            return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        return AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        if "trust_remote_code" in str(err):
            from lmtune.models.load import remote_code_refused

            raise remote_code_refused(f"The model config of {Path(ref).name}", ref) from err
        raise ModelError(f"Cannot read the model config of {ref}: {err}") from err
