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


def speed_up_lora(model: Any, *, autocast: bool, fast_dropout: bool) -> dict[str, int]:
    """Swap LoRA dropout for FastDropout and stop PEFT's input casts (under autocast only).

    `fast_dropout` is meant for CPU (CUDA's dropout draws its masks fast already).

    Only plain LoRA adapters are touched (DoRA and other variants compute with the input's dtype
    themselves). Returns how many dropouts were swapped and casts turned off.
    """
    from peft.tuners.lora import LoraLayer

    swapped = uncast = 0
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
    return {"dropout": swapped, "input_cast": uncast}


def restore_input_casts(model: Any) -> None:
    """PEFT's input casts back on (after training: generation may run without autocast)."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.cast_input_dtype_enabled = True
