"""Load any target for inference: a run directory, an alias, a .gguf file, a folder or a hub id.

A run directory is loaded as its base model plus what the run trained, with the tokenizer (and so
the chat template) saved in the run, which is the one it was trained with. A classification run
loads as its sequence-classification model (the labels come from the run's marker).
"""

from __future__ import annotations

import pickle
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
    target: str,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    quiet: bool = False,
    full_precision: bool = False,
) -> LoadedTarget:
    """`full_precision`: load a run's base without its method's quantization (a QLoRA adapter on the
    original weights, as `lmtune merge` needs), in `dtype`."""
    from lmtune.methods.base import get_method, method_options
    from lmtune.models.load import load_causal_lm, load_tokenizer, pickle_refused
    from lmtune.models.resolve import ModelRef, resolve_model_ref

    if is_run_dir(target):
        run_dir = Path(target)
        info = read_marker(run_dir)
        method = get_method(info["method"])
        own = ModelRef(
            spec=str(run_dir), kind="folder", path=str(run_dir), gguf_file=None, display=run_dir.name
        )
        remote = bool(info.get("trust_remote_code"))  # recorded by a run that set model.trust_remote_code
        tokenizer = load_tokenizer(own, trust_remote_code=remote)
        task = info.get("task", "sft")
        loader: Any = load_causal_lm
        if task == "classification":
            loader = _classifier_loader(run_dir, info, tokenizer)
        if method.needs_base:
            opts = method_options(info["method"], info.get("method_options"))
            base = loader(
                resolve_model_ref(info["base_model"]),
                dtype=dtype,
                device=device,
                quiet=quiet,
                trust_remote_code=remote,
                **({} if full_precision else method.load_kwargs(opts, bf16=info.get("bf16", False))),
            )
            try:
                model = method.load(base, run_dir, task=task)
            except pickle.UnpicklingError as err:  # an adapter_model.bin with more than tensors
                raise pickle_refused(f"the {info['method']} weights of run {run_dir.name}", run_dir) from err
        else:
            model = loader(own, dtype=dtype, device=device, quiet=quiet, trust_remote_code=remote)
        model.eval()
        if task == "classification":
            from lmtune.models.classifier import pad_left_for_last_token

            pad_left_for_last_token(model, tokenizer)
        return LoadedTarget(model, tokenizer, run_dir.name, info)
    ref = resolve_model_ref(target)
    tokenizer = load_tokenizer(ref)
    model = load_causal_lm(ref, dtype=dtype, device=device, quiet=quiet)
    model.eval()
    return LoadedTarget(model, tokenizer, ref.display)


def _classifier_loader(run_dir: Path, info: dict[str, Any], tokenizer: Any) -> Any:
    """load_classifier with the run's labels bound (the head's shape and names)."""
    from functools import partial

    from lmtune.models.classifier import label_maps, load_classifier, run_labels

    id2label, label2id = label_maps(run_labels(run_dir, info))
    return partial(
        load_classifier,
        num_labels=len(id2label),
        id2label=id2label,
        label2id=label2id,
        pad_token_id=tokenizer.pad_token_id,
    )


def require_generative(target: str, command: str) -> None:
    """chat / generate need a language model; a classification run predicts labels instead.

    Checked from the run's marker, before any weights are loaded.
    """
    from lmtune.errors import ConfigError

    if is_run_dir(target) and read_marker(target).get("task") == "classification":
        raise ConfigError(
            f"{target} is a classification run: it predicts labels, it does not write text, so "
            f"`lmtune {command}` cannot use it. Use: lmtune predict {target} --data FILE"
        )
