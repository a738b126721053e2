"""Partial fine-tuning: the last N decoder layers (and any named extra modules) train in full.

The run directory holds a complete model folder, like `full`: the frozen part is copied as is.
For task: classification the head (and an encoder's pooler, which sits between the last layer and
the head) trains too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError
from lmtune.methods.base import Method, head_parameter_names, register


def decoder_layers(model: Any) -> tuple[str, Any]:
    """(qualified name, ModuleList) of the decoder layers: the ModuleList as long as the layer count."""
    import torch

    count = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return name, module
    raise ConfigError(
        f"Cannot find the decoder layers of this {type(model).__name__} (no list of "
        f"{count} layers); method freeze needs them. Use method.name: lora or full."
    )


def match_modules(model: Any, names: list[str], option: str) -> list[str]:
    """Qualified module names matching each of `names` exactly or as a dotted-path suffix."""
    found: list[str] = []
    all_names = [n for n, _ in model.named_modules() if n]
    for wanted in names:
        hits = [n for n in all_names if n == wanted or n.endswith("." + wanted)]
        if not hits:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in all_names if not n.rsplit(".", 1)[-1].isdigit()})
            raise ConfigError(
                f"{option}: no module named '{wanted}' in this model. Module names here: {', '.join(leaves)}."
            )
        found += hits
    return found


@register
class Freeze(Method):
    name = "freeze"
    mergeable = True  # nothing to merge: the saved weights are the whole model
    needs_base = False

    def check(self, model: Any, opts: Any) -> None:
        _, layers = decoder_layers(model)
        if opts.trainable_layers > len(layers):
            raise ConfigError(
                f"method.trainable_layers is {opts.trainable_layers} but the model has {len(layers)} "
                f"decoder layers. Set it to at most {len(layers)} (or use method.name: full)."
            )
        match_modules(model, opts.extra_modules, "method.extra_modules")

    def prepare(self, model: Any, opts: Any, *, task: str = "sft") -> Any:
        prefix, layers = decoder_layers(model)
        first = len(layers) - opts.trainable_layers
        chosen = [f"{prefix}.{i}" for i in range(first, len(layers))]
        chosen += match_modules(model, opts.extra_modules, "method.extra_modules")
        head: set[str] = set()
        if task == "classification":
            head = set(head_parameter_names(model))
            chosen += [n for n, _ in model.named_modules() if n == "pooler" or n.endswith(".pooler")]
        for name, param in model.named_parameters():
            param.requires_grad_(name in head or any(name.startswith(m + ".") for m in chosen))
        return model

    def load(self, base: Any, run_dir: Path, *, task: str = "sft") -> Any:
        return base
