"""GGUF -> a normal Hugging Face model folder.

transformers can read a GGUF straight away, but it re-parses and dequantizes the whole file on
every load (15-20 s for a 135M model) and leaves GGUF traces on the model: a `quantization_config`
that makes `save_pretrained` refuse and PEFT treat the model as quantized, and a
`_model_name_or_path` copied from the file's `general.name`. Importing once writes dense
safetensors, a clean config, the tokenizer with its chat template and a generation config that
stops on the template's end-of-turn token, so later loads take a second and look like any model.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmtune.errors import ModelError
from lmtune.models.tokens import unique_ids

GGUF_MAGIC = b"GGUF"
DTYPES = ("auto", "float32", "bfloat16", "float16")
_NOT_ARCHITECTURES = {"general", "tokenizer"}  # keys of transformers' mapping table that are not models


def check_gguf_file(gguf_path: str | Path) -> Path:
    """The path if it is an existing GGUF file (by its magic bytes); a ModelError that says why not."""
    path = Path(gguf_path).expanduser()
    if not path.exists():
        raise ModelError(f"GGUF file not found: {path}")
    if not path.is_file():
        raise ModelError(f"{path} is a folder, not a GGUF file. Pass the .gguf file itself.")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(
            f"{path} is not a GGUF file (it does not start with the bytes 'GGUF'). "
            "Pass a .gguf file as written by llama.cpp, or a Hugging Face model folder."
        )
    return path.resolve()


@contextmanager
def hf_progress_bars_off() -> Iterator[None]:
    """Silence transformers' per-load progress bars (a local load is ~1 s), restoring the setting."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def supported_architectures() -> list[str]:
    """GGUF architectures this transformers version can load (legacy reader and new path together)."""
    from transformers.integrations.gguf import GGUF_ARCHS
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted((set(GGUF_SUPPORTED_ARCHITECTURES) | set(GGUF_ARCHS)) - _NOT_ARCHITECTURES)


def torch_dtype(dtype: str) -> Any:
    """'float32' | 'bfloat16' | 'float16' -> torch dtype; 'auto' -> None (let transformers choose)."""
    import torch

    if dtype not in DTYPES:
        raise ModelError(f"Unknown dtype '{dtype}'. Choose one of: {', '.join(DTYPES)}.")
    return None if dtype == "auto" else getattr(torch, dtype)


def _unsupported(path: Path, err: Exception) -> ModelError:
    """Turn transformers' 'not supported' errors into a sentence that lists what is supported."""
    return ModelError(
        f"transformers {_tf_version()} cannot load the GGUF {path.name}: {err} "
        f"Supported GGUF architectures: {', '.join(supported_architectures())}. "
        "Convert the original model with save_pretrained instead, or upgrade transformers."
    )


def _tf_version() -> str:
    import transformers

    return transformers.__version__


def load_dense_from_gguf(gguf_path: str | Path, *, dtype: str = "auto", device_map: Any = None) -> Any:
    """A plain, dense causal LM from a GGUF, with the GGUF quantizer and its config traces removed.

    `GgufConfig(dequantize=True)` keeps the weights dense even where the `kernels` package would
    let transformers keep them packed (packed models cannot be trained or saved).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, GgufConfig

    path = check_gguf_file(gguf_path)
    try:
        # Parse the metadata once and hand it on: from_pretrained would parse it a second time (~5 s).
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent,
            gguf_file=path.name,
            config=config,
            dtype=torch_dtype(dtype) or "auto",
            quantization_config=GgufConfig(dequantize=True),
            device_map=device_map,
            local_files_only=True,
        )
    except (ValueError, NotImplementedError, KeyError) as err:
        text = str(err)
        if "Unrecognized configuration class" in text:
            raise ModelError(
                f"{path.name} holds a model that is not a causal language model: {text}"
            ) from err
        raise _unsupported(path, err) from err
    except OSError as err:
        raise ModelError(f"Could not read the GGUF {path}: {err}") from err
    strip_gguf_traces(model)
    return model


def strip_gguf_traces(model: Any) -> None:
    """Make a dequantized GGUF model an ordinary one: no quantizer, no GGUF config leftovers."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        if getattr(quantizer, "packed_modules", None):  # only dense weights may lose their quantizer
            raise ModelError("transformers kept this GGUF's weights packed; lmtune needs them dequantized.")
        quantizer.remove_quantization_config(model)  # transformers' own way to drop the quantizer
    if hasattr(model.config, "_model_name_or_path"):  # the file's `general.name`, not a path
        delattr(model.config, "_model_name_or_path")


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template closes an assistant turn with (<|im_end|>, <|eot_id|>...).

    Found by rendering a two-message conversation and reading the first special token after the
    assistant's text, so it works for any template without a table of known tokens.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "lmtunemarker"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that rejects this shape simply gives no answer
        return None
    if not isinstance(text, str) or marker not in text:
        return None
    tail = text.split(marker, 1)[1]
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    for token_id in tokenizer(tail, add_special_tokens=False)["input_ids"][:4]:
        if token_id in special:
            return int(token_id)
        if tokenizer.decode([token_id]).strip():  # ordinary text before any special token: none
            return None
    return None


def set_generation_tokens(model: Any, tokenizer: Any) -> None:
    """bos/eos/pad on the generation config, with the end-of-turn token among eos so chat stops."""
    gen = model.generation_config
    eos = unique_ids(
        gen.eos_token_id, model.config.eos_token_id, tokenizer.eos_token_id, end_of_turn_id(tokenizer)
    )
    gen.eos_token_id = eos[0] if len(eos) == 1 else (eos or None)
    if gen.bos_token_id is None:
        gen.bos_token_id = tokenizer.bos_token_id
    if gen.pad_token_id is None:
        gen.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [None])[0]
        )


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.is_file():
        raise ModelError(f"{out_dir} is a file; pass a new or empty folder to import into.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ModelError(f"{out_dir} is not empty; pass a new or empty folder so no old files get mixed in.")


def import_gguf(gguf_path: str | Path, out_dir: str | Path, *, dtype: str = "auto") -> Path:
    """Write a dense Hugging Face folder from a GGUF file and return `out_dir`.

    The folder is written beside `out_dir` under a temporary name and renamed into place, so an
    interrupted import never leaves a half-written model behind.
    """
    path = check_gguf_file(gguf_path)
    torch_dtype(dtype)  # reject a bad dtype before the slow part
    out = Path(out_dir).expanduser().resolve()
    _prepare_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{time.monotonic_ns()}"

    with hf_progress_bars_off():
        _write_folder(path, tmp, out, dtype)
    return out


def _write_folder(path: Path, tmp: Path, out: Path, dtype: str) -> None:
    """Load tokenizer and dense model from the GGUF, save both into `tmp`, then rename to `out`."""
    from transformers import AutoTokenizer

    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except (ValueError, NotImplementedError, KeyError) as err:
            raise _unsupported(path, err) from err
        model = load_dense_from_gguf(path, dtype=dtype)
        set_generation_tokens(model, tokenizer)
        max_positions = getattr(model.config, "max_position_embeddings", None)
        if max_positions and tokenizer.model_max_length > 10**9:  # GGUFs carry no model_max_length
            tokenizer.model_max_length = max_positions
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _check_written(tmp)
        if out.is_dir():
            out.rmdir()  # empty, checked above; os.replace needs the name free on every OS
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_written(folder: Path) -> None:
    """Guard the promise callers rely on: config.json loads as a plain, unquantized config."""
    import json

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    leftovers = {"quantization_config", "_model_name_or_path"} & set(config)
    if leftovers:
        raise ModelError(f"internal error: GGUF import left {sorted(leftovers)} in config.json")
    if not any(folder.glob("*.safetensors")):
        raise ModelError(f"internal error: GGUF import wrote no safetensors weights into {folder}")
