"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020), written here because the
`adapters` library pins an older transformers.

A small residual network y -> y + up(act(down(y))) is added as a child of a decoder layer's MLP
(and, for houlsby, of its attention block) and applied by a forward hook on that module: no
library source is patched, and the parameter names say where each adapter sits
(`model.layers.0.mlp.bottleneck_adapter.down.weight`). `up` starts at zero, so the model is
unchanged until training moves it. Everything else stays frozen.

    x ─┬─> input_layernorm ─> self_attn ─> [A] ─> (+) ─┬─> post_attention_layernorm ─> mlp ─> [A] ─> (+) ─>
       └──────────────── residual ─────────────────┘   └────────────────── residual ──────────────────┘
                              houlsby only ─^                            houlsby and pfeiffer ─^
    [A]: y -> y + up(act(down(y))), a child of self_attn / mlp, applied by a forward hook on it.

For task: classification (a decoder with a `score` head) the head trains in full and is saved in
the adapter file too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmtune import __version__
from lmtune.errors import ConfigError, ModelError
from lmtune.methods.base import Method, head_parameter_names, register

WEIGHTS = "bottleneck_adapter.safetensors"
CONFIG = "bottleneck_adapter.json"
FORMAT_VERSION = 1
CHILD = "bottleneck_adapter"
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
PLACES = {"pfeiffer": ("mlp",), "houlsby": ("self_attn", "mlp")}


class Bottleneck(nn.Module):
    """down -> activation -> up, added to its input; zero `up` makes it the identity at start."""

    def __init__(self, hidden: int, size: int, non_linearity: str) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(size, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.up(self.act(self.down(y)))


def _adapt_output(module: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook: adapt the module's hidden-state output (element 0 when it returns a tuple).

    It reads the adapter from `module`, not from a closure, so a deep-copied model adapts with its
    own copy.
    """
    adapter = getattr(module, CHILD)
    if isinstance(output, tuple):
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """Every module with both `self_attn` and `mlp` children (Llama, Qwen, Mistral, Gemma ...)."""
    layers = [
        m
        for m in model.modules()
        if isinstance(getattr(m, "self_attn", None), nn.Module)
        and isinstance(getattr(m, "mlp", None), nn.Module)
    ]
    if not layers:
        arch = ", ".join(
            getattr(getattr(model, "config", None), "architectures", None) or [type(model).__name__]
        )
        raise ConfigError(
            f"method.name=adapter found no decoder layers in {arch}: it looks for modules with "
            "`self_attn` and `mlp` children, which this architecture does not have. Use lora instead."
        )
    return layers


def insert_adapters(model: nn.Module, *, adapter_type: str, size: int, non_linearity: str) -> list[nn.Module]:
    """Add a Bottleneck and its hook to each wrapped module; returns the adapters, in model order."""
    hidden = _hidden_size(model)
    added = []
    for layer in decoder_layers(model):
        for place in PLACES[adapter_type]:
            target = getattr(layer, place)
            if hasattr(target, CHILD):
                raise ConfigError("this model already has bottleneck adapters; insert them once.")
            ref = next(target.parameters())
            dtype = ref.dtype if ref.is_floating_point() else torch.float32  # e.g. a quantized base
            adapter = Bottleneck(hidden, size, non_linearity).to(device=ref.device, dtype=dtype)
            target.add_module(CHILD, adapter)
            target.register_forward_hook(_adapt_output)
            added.append(adapter)
    return added


def _hidden_size(model: nn.Module) -> int:
    return int(model.config.get_text_config().hidden_size)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights, keyed by their parameter names in `model` (with a classifier's head)."""
    head = set(head_parameter_names(model))
    return {n: p.detach() for n, p in model.named_parameters() if f".{CHILD}." in f".{n}" or n in head}


@register
class Adapter(Method):
    name = "adapter"
    mergeable = False
    needs_base = True
    not_mergeable_because = (
        "a bottleneck adapter is a small non-linear network inside each layer; "
        "it cannot be folded into the existing weights."
    )

    def check(self, model: Any, opts: Any) -> None:
        decoder_layers(model)

    def prepare(self, model: Any, opts: Any, *, task: str = "sft") -> Any:
        size = opts.bottleneck_size or max(1, _hidden_size(model) // opts.reduction_factor)
        model.requires_grad_(False)
        for adapter in insert_adapters(
            model, adapter_type=opts.adapter_type, size=size, non_linearity=opts.non_linearity
        ):
            adapter.requires_grad_(True)
        if task == "classification":
            head = set(head_parameter_names(model))
            for name, param in model.named_parameters():
                if name in head:
                    param.requires_grad_(True)
        # Recorded for save(): the resolved size and the options it came from.
        model._lmtune_adapter = {
            "adapter_type": opts.adapter_type,
            "non_linearity": opts.non_linearity,
            "bottleneck_size": size,
            "hidden_size": _hidden_size(model),
            "options": opts.options() if hasattr(opts, "options") else {},
        }
        return model

    def save(self, model: Any, out_dir: Path, *, state_dict: dict[str, Any] | None = None) -> None:
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        info = {"format_version": FORMAT_VERSION, "lmtune_version": __version__, **model._lmtune_adapter}
        own = adapter_state(model)
        if state_dict is not None:  # gathered from a sharded run: the same names, whole tensors
            own = {n: state_dict[n] for n in own}
        tensors = {n: t.contiguous().cpu() for n, t in own.items()}
        save_file(tensors, str(out_dir / WEIGHTS), metadata={"format": "pt"})
        (out_dir / CONFIG).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    def load(self, base: Any, run_dir: Path, *, task: str = "sft") -> Any:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        cfg_path, weights_path = Path(run_dir) / CONFIG, Path(run_dir) / WEIGHTS
        try:
            info = json.loads(cfg_path.read_text(encoding="utf-8"))
            keys = ("adapter_type", "non_linearity", "bottleneck_size", "hidden_size")
            adapter_type, non_linearity, size, hidden = (info[k] for k in keys)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ModelError(
                f"{cfg_path} is missing or not a valid bottleneck adapter config ({err!r})."
            ) from err
        if info.get("format_version", 0) > FORMAT_VERSION or (adapter_type, non_linearity) not in [
            (t, a) for t in PLACES for a in ACTIVATIONS
        ]:
            raise ModelError(
                f"{cfg_path} asks for format {info.get('format_version')}, adapter_type {adapter_type!r}, "
                f"non_linearity {non_linearity!r}, which this lmtune ({__version__}) does not know: "
                f"it was written by lmtune {info.get('lmtune_version')}; upgrade lmtune to load it."
            )
        if hidden != _hidden_size(base):
            raise ModelError(
                f"{cfg_path} was trained on a model of hidden size {hidden}, but the base has "
                f"{_hidden_size(base)}: this run belongs to another base model."
            )
        try:
            state = load_file(str(weights_path))
        except (OSError, SafetensorError) as err:
            raise ModelError(f"Could not read the adapter weights {weights_path}: {err}.") from err
        insert_adapters(base, adapter_type=adapter_type, size=size, non_linearity=non_linearity)
        expected = adapter_state(base)
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        bad_shape = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
        if missing or unexpected or bad_shape:
            raise ModelError(
                f"{weights_path} does not match the adapters of this base model: missing "
                f"{missing[:3] or 'none'}, unexpected {unexpected[:3] or 'none'}, wrong shape "
                f"{sorted(bad_shape)[:3] or 'none'}. The file is damaged or from another run."
            )
        base.load_state_dict(state, strict=False)  # strict keys were checked above, on the adapters only
        base.requires_grad_(False)
        base._lmtune_adapter = info
        return base
