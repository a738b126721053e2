"""Load a sequence-classification model: an encoder (BERT/MiniLM) or a decoder LM with a label head.

`AutoModelForSequenceClassification` puts a fresh head (`classifier` on BERT-style encoders,
`score` on Llama-style decoders) on the pretrained body. A decoder classifies from its last
non-padding token, which it finds with `config.pad_token_id`, so that is taken from the tokenizer
when the checkpoint's config has none. transformers' multi-line load report about the new head
is replaced by one line.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

from lmtune.errors import ModelError
from lmtune.models.gguf_import import hf_progress_bars_off
from lmtune.models.load import (
    _load_error,
    _torch_dtype,
    describe_model,
    pick_dtype,
    resolve_device,
    safe_weights_kwargs,
)
from lmtune.models.resolve import ModelRef

# The head's attribute name in transformers' *ForSequenceClassification classes (PEFT uses the same).
HEAD_NAMES = ("classifier", "score")


def load_classifier(
    ref: ModelRef,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    num_labels: int,
    id2label: dict[int, str],
    label2id: dict[str, int],
    pad_token_id: int | None = None,
    quiet: bool = False,
    trust_remote_code: bool = False,
    **extra: Any,
) -> Any:
    """The model of `ref` with a `num_labels`-way head, in `dtype` on `device`.

    `pad_token_id` (the tokenizer's) is set on the config when it has none: a decoder needs it to
    find each row's last token. `extra` goes to `from_pretrained` (a method's `load_kwargs`).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    if ref.gguf_file:
        raise ModelError(
            f"{ref.display} is a .gguf file; a classifier is built from a model folder. Import it first "
            "(lmtune models import-gguf FILE OUT) and use the folder, or use a built-in alias."
        )
    device = resolve_device(device)
    try:
        config = AutoConfig.from_pretrained(
            ref.path,
            num_labels=num_labels,
            id2label=dict(id2label),
            label2id=dict(label2id),
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as err:
        raise _load_error(ref, err, what="model config") from err
    if getattr(config, "pad_token_id", None) is None and pad_token_id is not None:
        config.pad_token_id = pad_token_id
    chosen = pick_dtype(dtype, device, config_dtype=getattr(config, "dtype", None))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the head is reported below, in one line
    try:
        with hf_progress_bars_off():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                ref.path,
                config=config,
                dtype=_torch_dtype(chosen),
                device_map=None if device == "cpu" else device,
                output_loading_info=True,
                trust_remote_code=trust_remote_code,
                **safe_weights_kwargs(ref, quiet=quiet),
                **extra,
            )
    except (OSError, ValueError, pickle.UnpicklingError) as err:
        raise _load_error(ref, err, what="model") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    _check_missing(model, info.get("missing_keys") or [], ref)
    if getattr(model, "score", None) is not None:  # a decoder: padded on the left, see below
        model.register_forward_pre_hook(_positions_from_mask, with_kwargs=True)
    if not quiet:
        new = new_head_names(model, info.get("missing_keys") or [])
        head = f"; new {num_labels}-label head {', '.join(new)} (random start)" if new else ""
        print(f"Loaded {ref.display}: {describe_model(model)}{head}", file=sys.stderr, flush=True)
    return model


def _positions_from_mask(module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Forward pre-hook: number each row's tokens from its first real one, as `generate` does.

    Decoders are padded on the left (`pad_left_for_last_token`); without this, a row with p pads
    would see its text p positions later, and PEFT's prompt / prefix tuning (which drop any
    position ids given to them) would see it further from the virtual tokens, so a batched
    prediction would differ from the same text alone.
    """
    import torch

    mask = kwargs.get("attention_mask")
    if kwargs.get("position_ids") is None and isinstance(mask, torch.Tensor) and mask.dim() == 2:
        inputs = kwargs.get("inputs_embeds")
        if inputs is None:
            inputs = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(inputs, torch.Tensor):
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            kwargs["position_ids"] = positions[:, -inputs.shape[1] :]  # prefix tuning: mask covers the prefix
    return args, kwargs


def new_head_names(model: Any, missing: list[str]) -> list[str]:
    """The head's modules among the weights the checkpoint lacked (so they start random)."""
    return sorted({k.split(".", 1)[0] for k in missing if k.split(".", 1)[0] in HEAD_NAMES})


def _check_missing(model: Any, missing: list[str], ref: ModelRef) -> None:
    """Only the head may start random: a missing body weight means the wrong checkpoint."""
    body = [k for k in missing if k.split(".", 1)[0] not in HEAD_NAMES]
    if body:
        raise ModelError(
            f"{ref.display} ({ref.path}) lacks {len(body)} weights of {type(model).__name__}, e.g. "
            f"{', '.join(body[:3])}: the checkpoint does not fit this architecture. Use a base model "
            "folder (config.json + weights) of an encoder or decoder language model."
        )


def head_module(model: Any) -> tuple[str, Any] | None:
    """(name, module) of the classification head of a seq-cls model (also inside a PEFT wrapper)."""
    inner = model
    if hasattr(model, "get_base_model"):
        inner = model.get_base_model()
    for name in HEAD_NAMES:
        module = getattr(inner, name, None)
        if module is not None:
            return name, module
    return None


def is_classifier(model: Any) -> bool:
    """True for a *ForSequenceClassification model (plain or PEFT-wrapped)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(inner).__name__.endswith("ForSequenceClassification")


def pad_left_for_last_token(model: Any, tokenizer: Any) -> None:
    """A decoder (`score` head) classifies from the last token: pad on the left, so that token is
    the last position even when its padding cannot be seen (PEFT's prompt and P-tuning feed
    embeddings, not ids, and transformers then takes the final position)."""
    found = head_module(model)
    if found is not None and found[0] == "score":
        tokenizer.padding_side = "left"


def label_maps(labels: list[str]) -> tuple[dict[int, str], dict[str, int]]:
    """id2label, label2id for a label list (its order is the model's output order)."""
    return dict(enumerate(labels)), {label: i for i, label in enumerate(labels)}


def run_labels(run_dir: Path, marker: dict[str, Any]) -> list[str]:
    """The labels a classification run was trained with (its marker), or a ModelError."""
    labels = marker.get("labels")
    if not labels:
        raise ModelError(
            f"{run_dir} is marked task: classification but records no labels in lmtune_run.json; "
            "the run is incomplete or from an older lmtune. Train it again."
        )
    return list(labels)
