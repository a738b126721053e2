"""Load any target for inference: a run directory, an alias, a .gguf file, a folder or a hub id.

A run directory is loaded as its base model plus what the run trained, with the tokenizer (and so
the chat template) saved in the run, which is the one it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.run.layout import is_run_dir, read_marker


@dataclass
class LoadedTarget:
    model: Any
    tokenizer: Any
    name: str
    run: dict[str, Any] | None = None  # the run's marker when the target is a run directory


def load_target(
    target: str, *, dtype: str = "auto", device: str = "cpu", quiet: bool = False
) -> LoadedTarget:
    from lmtune.methods.base import get_method, method_options
    from lmtune.models.load import load_causal_lm, load_tokenizer
    from lmtune.models.resolve import ModelRef, resolve_model_ref

    if is_run_dir(target):
        run_dir = Path(target)
        info = read_marker(run_dir)
        method = get_method(info["method"])
        own = ModelRef(
            spec=str(run_dir), kind="folder", path=str(run_dir), gguf_file=None, display=run_dir.name
        )
        tokenizer = load_tokenizer(own)
        if method.needs_base:
            opts = method_options(info["method"], info.get("method_options"))
            base = load_causal_lm(
                resolve_model_ref(info["base_model"]),
                dtype=dtype,
                device=device,
                quiet=quiet,
                **method.load_kwargs(opts, bf16=info.get("bf16", False)),
            )
            model = method.load(base, run_dir)
        else:
            model = load_causal_lm(own, dtype=dtype, device=device, quiet=quiet)
        model.eval()
        return LoadedTarget(model, tokenizer, run_dir.name, info)
    ref = resolve_model_ref(target)
    tokenizer = load_tokenizer(ref)
    model = load_causal_lm(ref, dtype=dtype, device=device, quiet=quiet)
    model.eval()
    return LoadedTarget(model, tokenizer, ref.display)
