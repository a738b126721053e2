"""Load the tokenizer and causal LM a `ModelRef` points at, and say what was loaded.

One place decides the dtype (so "auto" means the same everywhere), turns transformers' loading
errors into sentences that name the path and the fix, and prints the one "Loaded ..." line.

Safe loading, because a model folder is someone else's files: weights are read from safetensors
(plain tensors, no code) whenever the folder has them; a folder with only pickle weights
(pytorch_model.bin) is read by transformers with `torch.load(weights_only=True)`, which refuses
any object that is not a tensor (a crafted `__reduce__` payload is an error, never executed); and
Python code shipped with a model (config.json `auto_map`) runs only with `trust_remote_code`,
which is off unless the config sets model.trust_remote_code.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

from lmtune.errors import ModelError
from lmtune.models.aliases import ALIASES
from lmtune.models.cpu import bf16_capped
from lmtune.models.gguf_import import DTYPES, hf_progress_bars_off, load_dense_from_gguf
from lmtune.models.resolve import ModelRef


def load_tokenizer(ref: ModelRef, *, trust_remote_code: bool = False) -> Any:
    """AutoTokenizer for `ref`, with a pad token (eos, else unk) so batching works.

    Local kinds need no `local_files_only`: transformers reads a local folder without the network.
    """
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.path, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as err:
        raise _load_error(ref, err, what="tokenizer") from err
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        if fallback is not None:
            tokenizer.pad_token = fallback
    return tokenizer


def load_causal_lm(
    ref: ModelRef,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    quiet: bool = False,
    trust_remote_code: bool = False,
    **extra: Any,
) -> Any:
    """The causal LM for `ref` in the chosen dtype on `device`; prints one line unless `quiet`.

    `extra` goes to `from_pretrained` (a method's `load_kwargs`, e.g. a bitsandbytes config).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ModelError(f"Unknown dtype '{dtype}'. Choose one of: {', '.join(DTYPES)}.")
    device = resolve_device(device)
    device_map = None if device == "cpu" else device
    with hf_progress_bars_off():
        if ref.gguf_file and extra:
            raise ModelError(
                f"{ref.display} is a .gguf file, which cannot be re-quantized on load. Import it into a "
                "model folder first (lmtune models import-gguf FILE OUT) and train on the folder."
            )
        if ref.gguf_file:
            chosen = pick_dtype(dtype, device, config_dtype=None)
            model = load_dense_from_gguf(Path(ref.path) / ref.gguf_file, dtype=chosen, device_map=device_map)
        else:
            safe = safe_weights_kwargs(ref, quiet=quiet)
            try:
                config = AutoConfig.from_pretrained(ref.path, trust_remote_code=trust_remote_code)
                chosen = pick_dtype(dtype, device, config_dtype=getattr(config, "dtype", None))
                model = AutoModelForCausalLM.from_pretrained(
                    ref.path,
                    config=config,
                    dtype=_torch_dtype(chosen),
                    device_map=device_map,
                    trust_remote_code=trust_remote_code,
                    **safe,
                    **extra,
                )
            except (OSError, ValueError, pickle.UnpicklingError) as err:
                raise _load_error(ref, err, what="model") from err
    if not quiet:
        print(f"Loaded {ref.display}: {describe_model(model)}", file=sys.stderr, flush=True)
    return model


def safe_weights_kwargs(ref: ModelRef, *, quiet: bool = False) -> dict[str, Any]:
    """`use_safetensors=True` for a local folder holding safetensors weights (never its pickle files);
    for a folder with pickle weights only, one line saying they are read as tensors only."""
    folder = Path(ref.path)
    if not folder.is_dir():
        return {}  # a hub id: transformers prefers safetensors and reads .bin with weights_only=True
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")):
        return {"use_safetensors": True}
    pickled = sorted(p.name for p in folder.glob("*.bin") if p.name.startswith("pytorch_model"))
    if pickled and not quiet:
        print(
            f"{ref.display}: no safetensors weights; reading {pickled[0]} (pickle) with weights_only=True, "
            "which loads tensors only and refuses anything else",
            file=sys.stderr,
            flush=True,
        )
    return {}


def resolve_device(device: str) -> str:
    """'auto' -> cuda when available, else cpu; a named accelerator that is absent is a ModelError."""
    import torch

    device = (device or "cpu").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(
            f"device '{device}' was asked for, but torch sees no CUDA GPU here. Use device: cpu."
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelError(
            "device 'mps' was asked for, but this torch build or machine has no MPS. Use device: cpu."
        )
    return device


def pick_dtype(dtype: str, device: str, *, config_dtype: Any) -> str:
    """Settle "auto": float32, unless the model's config names a half type the device runs natively.

    An explicit dtype is always honoured.
    """
    if dtype != "auto":
        return dtype
    name = str(config_dtype).removeprefix("torch.") if config_dtype is not None else None
    if name in ("bfloat16", "float16") and device_supports(name, device):
        return name
    return "float32"


def device_supports(dtype: str, device: str) -> bool:
    """Whether `device` computes in `dtype` natively (emulated half precision on a CPU is slow)."""
    import torch

    if dtype == "float32":
        return True
    if device.startswith("cuda"):
        return dtype == "float16" or torch.cuda.is_bf16_supported()
    if device == "mps":
        return dtype == "float16"
    if bf16_capped():
        return False
    probe = {
        "bfloat16": ("_is_avx512_bf16_supported", "_is_amx_tile_supported"),
        "float16": ("_is_amx_fp16_supported",),
    }
    for name in probe.get(dtype, ()):
        check = getattr(torch.cpu, name, None)
        if check is not None and check():
            return True
    return False


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def count_parameters(model: Any) -> tuple[int, int]:
    """(total, trainable); tied weights count once, as `model.parameters()` yields them once."""
    total = trainable = 0
    for param in model.parameters():
        n = param.numel()
        if type(param).__name__ == "Params4bit":  # two 4-bit values packed per storage byte
            n *= 2 * getattr(getattr(param, "quant_storage", None), "itemsize", 1)
        total += n
        if param.requires_grad:
            trainable += n
    return total, trainable


def format_count(n: int) -> str:
    """134_515_008 -> '134.5M'; 1_240_000_000 -> '1.24B'; 3_200 -> '3.2K'."""
    if n >= 1_000_000_000:
        return f"{n / 1e9:.2f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}K"
    return str(n)


def describe_model(model: Any) -> str:
    """'134.5M parameters, float32, cpu' (plus the trainable count once some are frozen)."""
    total, trainable = count_parameters(model)
    text = f"{format_count(total)} parameters"
    if trainable != total:
        text += f" ({format_count(trainable)} trainable)"
    first = next(model.parameters(), None)
    dtype = str(first.dtype if first is not None else model.dtype).removeprefix("torch.")
    device = str(first.device if first is not None else "cpu")
    return f"{text}, {dtype}, {device}"


def remote_code_refused(what: str, where: str | Path) -> ModelError:
    """transformers refused a model whose config names its own code (trust_remote_code was False)."""
    return ModelError(
        f"{what} ({where}) ships its own Python code (auto_map in its config), which lmtune does not run "
        "by default. If you trust that code, set model.trust_remote_code: true (the run records it); "
        "otherwise choose a model transformers supports natively."
    )


def pickle_refused(what: str, where: str | Path) -> ModelError:
    """A pickle file that holds more than tensors: refused by weights_only=True, never unpickled."""
    return ModelError(
        f"Refused to load {what} from {where}: its pickle weights hold objects other than tensors, which "
        "could run code when unpickled, so they were read with weights_only=True and rejected. Use weights "
        "saved as safetensors (save_pretrained writes them), or convert weights you trust to safetensors first."
    )


def _load_error(ref: ModelRef, err: Exception, *, what: str) -> ModelError:
    """A sentence naming the model, the path and the likely fix, for each kind of reference."""
    reason = " ".join(str(err).split())[:500] or type(err).__name__
    if not reason.endswith("."):
        reason += "."
    if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in reason:
        return pickle_refused(f"the {what} of {ref.display}", ref.path)
    if "trust_remote_code" in reason:
        return remote_code_refused(f"The {what} of {ref.display}", ref.path)
    if ref.kind == "hub":
        local = "" if Path(ref.path).exists() else f" (no local folder named '{ref.path}' exists either)"
        return ModelError(
            f"Could not fetch the {what} '{ref.path}' from the Hugging Face hub{local}: {reason} "
            "Offline, use a local model folder, a .gguf file, or a built-in alias "
            f"({', '.join(sorted(ALIASES))}); with HF_HUB_OFFLINE=1 a hub id loads only if it is "
            "already in the local Hugging Face cache."
        )
    if ref.kind == "alias" and not ref.gguf_file:
        hint = f"Delete the cache folder {ref.path} to re-import the alias."
    elif ref.gguf_file:
        hint = "Check that the GGUF file is complete (re-download it) and that transformers supports its architecture."
    else:
        hint = (
            "A model folder needs config.json, the weights (model.safetensors or shards) and the tokenizer "
            "files, as written by save_pretrained; an unknown model_type needs a newer transformers."
        )
    return ModelError(f"Could not load the {what} of {ref.display} from {ref.path}: {reason} {hint}")
