"""What the memory arithmetic needs to know about a model with its method on: counts and, per
decoder layer, which Linears and norms there are and which train. Two ways to get it:

- `spec_from_config`: computed from the config's numbers for the Llama-shaped decoders (Llama,
  Mistral, Qwen2, Qwen3, SmolLM) and the methods full, freeze, LoRA and QLoRA: no torch, so
  `lmtune estimate` answers in a second;
- `spec_from_model`: read off the model built on PyTorch's meta device with the method really
  applied (PEFT); every other architecture and method, and the reference the first is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LLAMA_SHAPED = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class LinearSpec:
    name: str  # path inside the layer, e.g. self_attn.q_proj.lora_A.default
    in_features: int
    out_features: int
    trains: bool


@dataclass
class LayerSpec:
    linears: list[LinearSpec] = field(default_factory=list)
    norms: list[bool] = field(default_factory=list)  # one per norm with a weight: does it train
    dropouts: list[tuple[int, tuple[float, ...]]] = field(default_factory=list)  # LoRA: (in, p's)
    trains: bool = False  # any parameter of the layer

    @property
    def drops(self) -> bool:
        """Some LoRA adapter of the layer has a dropout (p > 0)."""
        return any(x for _, p in self.dropouts for x in p)

    def key(self) -> tuple:
        """Order-free form, to compare two specs of the same layer."""
        return (sorted((x.name, x.in_features, x.out_features, x.trains) for x in self.linears),
                sorted(self.norms), sorted(self.dropouts), self.trains)  # fmt: skip


@dataclass
class ModelSpec:
    total: int  # parameters, each tied tensor once
    trainable: int
    quantised: int  # weights QLoRA stores in 4 bits (every frozen Linear but the head)
    embeddings_train: bool
    head_numel: int
    head_rows: int
    head_trains: bool
    layers: list[LayerSpec]


# -- from the meta model -----------------------------------------------------------------------------
def spec_from_model(model: Any, layer_count: int, *, qlora: bool) -> ModelSpec:
    import torch

    params = list(model.parameters())
    head = model.get_output_embeddings()
    layers = []
    for module in _decoder_layers(model, layer_count):
        spec = LayerSpec(trains=any(p.requires_grad for p in module.parameters()))
        for name, sub in module.named_modules():
            if isinstance(sub, torch.nn.Linear):
                spec.linears.append(
                    LinearSpec(name, sub.in_features, sub.out_features, sub.weight.requires_grad)
                )
            elif "Norm" in type(sub).__name__ and getattr(sub, "weight", None) is not None:
                spec.norms.append(bool(sub.weight.requires_grad))
            dropout = getattr(sub, "lora_dropout", None)
            if dropout is not None and hasattr(sub, "in_features"):
                spec.dropouts.append(
                    (sub.in_features, tuple(float(getattr(d, "p", 0)) for d in dropout.values()))
                )
        layers.append(spec)
    return ModelSpec(
        total=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        quantised=_quantised_params(model) if qlora else 0,
        embeddings_train=any(p.requires_grad for p in model.get_input_embeddings().parameters()),
        head_numel=head.weight.numel() if head is not None else 0,
        head_rows=head.weight.shape[0] if head is not None else 0,
        head_trains=bool(head is not None and head.weight.requires_grad),
        layers=layers,
    )


def _decoder_layers(model: Any, count: int) -> list[Any]:
    import torch

    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return list(module)
    return []


def _quantised_params(model: Any) -> int:
    """Weights bitsandbytes quantises: every Linear in the base model except the output head."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    seen: set[int] = set()
    n = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head or "lora_" in name:
            continue
        if module.weight.requires_grad or id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        n += module.weight.numel()
    return n


# -- from the config's numbers -------------------------------------------------------------------------
def spec_from_config(config: Any, cfg: Any, shape: Any, opts: Any) -> ModelSpec | None:
    """The spec computed from the numbers, or None where only the meta model can tell (another
    architecture or method, a classification head, LoRA options that change the adapter's shape)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(text, "model_type", None)
    method = opts.name  # opts: the method section (a run directory's recorded one, or the config's)
    if model_type not in LLAMA_SHAPED or cfg.task not in ("sft", "pretrain", "preference"):
        return None
    if method not in ("full", "freeze", "lora", "qlora"):
        return None
    if method in ("lora", "qlora") and (opts.use_dora or opts.modules_to_save):
        return None
    if method == "freeze" and (opts.extra_modules or opts.trainable_layers > shape.layers):
        return None
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    attention_bias = bool(getattr(text, "attention_bias", False))
    qkv_bias = model_type == "qwen2" or attention_bias
    # (path in the layer, in, out, bias)
    base = [
        ("self_attn.q_proj", h, q, qkv_bias),
        ("self_attn.k_proj", h, kv, qkv_bias),
        ("self_attn.v_proj", h, kv, qkv_bias),
        ("self_attn.o_proj", q, h, attention_bias and model_type != "qwen2"),
        ("mlp.gate_proj", h, i, bool(getattr(text, "mlp_bias", False))),
        ("mlp.up_proj", h, i, bool(getattr(text, "mlp_bias", False))),
        ("mlp.down_proj", i, h, bool(getattr(text, "mlp_bias", False))),
    ]
    norm_sizes = [h, h] + ([shape.head_dim, shape.head_dim] if model_type == "qwen3" else [])
    layer_params = sum(a * b + (b if bias else 0) for _, a, b, bias in base) + sum(norm_sizes)
    tied = bool(getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", True)))
    embed = shape.vocab * h
    total = embed + shape.layers * layer_params + h + (0 if tied else embed)

    lora = method in ("lora", "qlora")
    targets = _lora_targets(opts.target_modules, [n for n, *_ in base], shape.layers) if lora else set()
    if targets is None:
        return None
    first_trained = shape.layers - opts.trainable_layers if method == "freeze" else 0
    layers, trainable = [], 0
    for index in range(shape.layers):
        trains_all = method == "full" or (method == "freeze" and index >= first_trained)
        spec = LayerSpec(trains=trains_all or bool(targets))
        for name, n_in, n_out, _ in base:
            if lora and (index, name) in targets:
                spec.linears += [
                    LinearSpec(f"{name}.base_layer", n_in, n_out, False),
                    LinearSpec(f"{name}.lora_A.default", n_in, opts.r, True),
                    LinearSpec(f"{name}.lora_B.default", opts.r, n_out, True),
                ]
                spec.dropouts.append((n_in, (float(opts.dropout),)))
                trainable += opts.r * (n_in + n_out)
            else:
                spec.linears.append(LinearSpec(name, n_in, n_out, trains_all))
        spec.norms = [trains_all] * len(norm_sizes)
        trainable += layer_params if trains_all else 0
        layers.append(spec)
    full = method == "full"
    trainable += (embed + h + (0 if tied else embed)) if full else 0
    quantised = shape.layers * sum(a * b for _, a, b, _ in base) if method == "qlora" else 0
    return ModelSpec(
        total=total + (trainable if lora else 0),  # LoRA adds its adapters to the model
        trainable=trainable,
        quantised=quantised,
        embeddings_train=full,
        head_numel=embed,
        head_rows=shape.vocab,
        head_trains=full,
        layers=layers,
    )


def _lora_targets(targets: Any, names: list[str], layers: int) -> set[tuple[int, str]] | None:
    """(layer, path) pairs PEFT wraps: all-linear is every Linear but the head; a name matches a
    module's full name exactly or as a dotted suffix. None: a target outside the layers' Linears."""
    full = {(i, n): f"model.layers.{i}.{n}" for i in range(layers) for n in names}
    if targets in (None, "all-linear"):
        return set(full)
    chosen = set()
    for target in targets:
        hits = {k for k, path in full.items() if path == target or path.endswith("." + target)}
        if not hits:
            return None  # the head, the embeddings, or a typo: the meta build says which
        chosen |= hits
    return chosen
