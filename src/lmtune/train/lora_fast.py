"""LoRA's per-step overheads on CPU, removed without changing what the adapter learns.

Profiling a bf16 LoRA step (docs/performance.md) showed two costs outside the matrix multiplies:

- PEFT casts each layer's input to the adapter's float32 dtype before dropout (`cast_input_dtype`),
  and autocast casts it straight back to bf16 for the adapter's matmul: two full copies of the
  activations per adapted layer. Under autocast the cast changes nothing, so it is switched off
  through PEFT's own `cast_input_dtype_enabled` flag.
- Dropout's Bernoulli mask: torch's CPU generator draws one number per element (~7 ms for a
  4x512x576 input, four times per layer). `FastDropout` draws one 64-bit word per three elements and
  compares 16-bit lanes with a threshold, a third of the draws; the drop probability is p rounded to
  a multiple of 1/65536 (0.05 -> 0.0500031) and kept values are scaled by 1/(1 - that), so the
  output's expectation is the input, as with `nn.Dropout`. Independent masks per layer, as in PEFT.

A float32 profile (docs/performance.md) added PEFT's own arithmetic around the two small matmuls:
`lora_B(lora_A(dropout(x))) * scaling` then `result + ...` are two more passes over the layer's
full-width output forward and one backward, and the dropped copy of x is kept per layer.
`FusedLora`, installed as a PEFT LoRA variant for training only, computes the same update in one
autograd function (below).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

LANES = 65536  # 16-bit lanes


class FastDropout(nn.Module):
    """Inverted dropout with a mask drawn 16 bits per element (see the module docstring)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.cut = min(round(p * LANES), LANES - 1)  # lanes below this (of 0..65535) are dropped
        self.scale = LANES / (LANES - self.cut)

    @property
    def rounded_p(self) -> float:
        return self.cut / LANES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.cut == 0:
            return x
        return _MaskedScale.apply(x, keep_mask(x.shape, self.cut, x.device), self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def keep_mask(shape: torch.Size, cut: int, device: torch.device) -> torch.Tensor:
    """Bool mask, True with probability (65536 - cut) / 65536 per element, from torch's generator.

    `random_()` on int64 fills bits 0-62 uniformly (bit 63 is 0), so the three low 16-bit lanes
    of each word (little-endian) are three independent uniform 16-bit numbers.
    """
    n = shape.numel()
    words = -(-n // 3)
    raw = torch.empty(words, dtype=torch.int64, device=device).random_()
    lanes = raw.view(torch.int16).view(words, 4)[:, :3]  # int16: -32768..32767
    return (lanes >= cut - LANES // 2).view(-1)[:n].view(shape)


class _MaskedScale(torch.autograd.Function):
    """x * mask * scale, keeping only the bool mask (1 byte per element) for the backward pass."""

    @staticmethod
    def forward(ctx, x, mask, scale):  # noqa: D102
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.where(mask, x * scale, 0)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad * ctx.scale, 0), None, None


class _LoraUpdate(torch.autograd.Function):
    """result + ((x * mask) @ A^T * scale) @ B^T, keeping x, the bool mask and h for the backward.

        x (N, in) --mask--> (N, in) --A^T--> h (N, r) --*scale--> --B^T, + result--> (N, out)

    `scale` is LoRA's scaling times dropout's 1 / (1 - p), applied to the rank-r h instead of the
    full-width output, and the add is the matmul's own accumulation (addmm), so nothing of width
    `out` is written but the result. The dropped input is recomputed in the backward pass from x
    (one tensor for the adapters that read the same input, as q, k and v do) and the one-byte mask.
    Under autocast both passes run in autocast's dtype (custom_fwd / custom_bwd), as PEFT's matmuls
    would.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, x, result, a, b, mask, scale):  # noqa: D102
        x2 = x.reshape(-1, x.shape[-1])
        h = torch.mm(_dropped(x2, mask), a.t()) * scale
        out = torch.addmm(result.reshape(-1, result.shape[-1]), h, b.t())
        ctx.save_for_backward(x2, mask, a, b, h)
        ctx.scale, ctx.x_shape = scale, x.shape
        return out.view(*result.shape[:-1], out.shape[-1])

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad):  # noqa: D102
        x2, mask, a, b, h = ctx.saved_tensors
        need_x, need_result, need_a, need_b = ctx.needs_input_grad[:4]
        g = grad.reshape(-1, grad.shape[-1])
        grad_b = torch.mm(g.t(), h).to(b.dtype) if need_b else None
        gh = torch.mm(g, b) * ctx.scale
        grad_a = grad_x = None
        if need_a:
            grad_a = torch.mm(gh.t(), _dropped(x2, mask)).to(a.dtype)
        if need_x:
            gx = torch.mm(gh, a)
            if mask is not None:
                gx = gx.mul_(mask.view_as(gx))
            grad_x = gx.to(x2.dtype).view(ctx.x_shape)
        return grad_x, grad if need_result else None, grad_a, grad_b, None, None


def _dropped(x2: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x2 if mask is None else torch.where(mask.view_as(x2), x2, 0)


def _fusable(drop: nn.Module, a: nn.Module, b: nn.Module, x: torch.Tensor, result: torch.Tensor) -> bool:
    """The update is plain LoRA on plain tensors: float32 throughout, or under CPU autocast (biases
    were ruled out when the variant was installed)."""
    if x.dim() < 2:
        return False
    plain_dropout = isinstance(drop, FastDropout | nn.Identity) or not drop.training or drop.p == 0
    if torch.is_autocast_enabled("cpu"):
        return plain_dropout and x.device.type == "cpu"
    return plain_dropout and x.dtype == result.dtype == a.weight.dtype == b.weight.dtype


class FusedLora:
    """A PEFT LoRA variant (`module.lora_variant[adapter]`, PEFT's extension point for DoRA and
    others) computing vanilla LoRA with `_LoraUpdate`; installed for training by `speed_up_lora`
    and removed by `restore_lora`. Anything `_fusable` refuses runs PEFT's vanilla expression, and
    merging uses PEFT's own delta weight, so the variant never changes what is learned or saved."""

    @staticmethod
    def forward(
        module: Any, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **_: Any
    ) -> torch.Tensor:
        a, b = module.lora_A[active_adapter], module.lora_B[active_adapter]
        drop, scale = module.lora_dropout[active_adapter], module.scaling[active_adapter]
        if not _fusable(drop, a, b, x, result):
            return result + b(a(drop(x))) * scale
        mask = None
        if isinstance(drop, FastDropout) and drop.training and drop.cut:
            mask, scale = keep_mask(x.shape, drop.cut, x.device), scale * drop.scale
        return _LoraUpdate.apply(x, result, a.weight, b.weight, mask, scale)

    @staticmethod
    def merge_safe(module: Any, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight + module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module: Any, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module: Any, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight - module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def supports_lora_conversion() -> bool:
        return True


def speed_up_lora(model: Any, *, autocast: bool, fast_dropout: bool, fused: bool = False) -> dict[str, int]:
    """Swap LoRA dropout for FastDropout, stop PEFT's input casts (under autocast only) and compute
    plain LoRA linear layers with `FusedLora`.

    `fast_dropout` and `fused` are meant for CPU (CUDA's dropout draws its masks fast already, and
    the fused update is only measured on CPU). Only plain LoRA adapters are touched (DoRA and other
    variants compute with the input's dtype themselves). Returns how many dropouts were swapped,
    casts turned off and layers fused.
    """
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora.layer import Linear

    swapped = uncast = fused_layers = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer) or getattr(module, "lora_variant", None):
            continue
        if fast_dropout and sys.byteorder == "little":
            for name, drop in list(module.lora_dropout.items()):
                if type(drop) is nn.Dropout and drop.p > 0:
                    module.lora_dropout[name] = FastDropout(drop.p).train(drop.training)
                    swapped += 1
        if autocast and module.cast_input_dtype_enabled:
            module.cast_input_dtype_enabled = False
            uncast += 1
        if fused and type(module) is Linear and isinstance(module.base_layer, nn.Linear):
            for name in module.lora_A:
                if not module.lora_bias.get(name, False):
                    module.lora_variant[name] = FusedLora()
                    fused_layers += 1
    return {"dropout": swapped, "input_cast": uncast, "fused": fused_layers}


def restore_lora(model: Any) -> None:
    """After training: PEFT's input casts back on (generation may run without autocast) and the
    fused variant removed, so the model is PEFT's own again."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.cast_input_dtype_enabled = True
            for name, variant in list(module.lora_variant.items()):
                if isinstance(variant, FusedLora):
                    del module.lora_variant[name]
