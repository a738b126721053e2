"""Speed settings a run derives from its config and machine, decided once and printed.

Each `auto` switch in the config resolves here to on or off with a one-line reason, so the user sees
what was chosen and why (nothing is silently rewritten). The decisions:

- packing (sft): on, except for prefix/prompt/ptuning, whose virtual tokens must start every sample
- gradient checkpointing: on only when the memory estimate says the run will not fit without it
- attention: flash-attn 2 on CUDA when installed (varlen kernels isolate packed samples); packed rows
  on CPU: lmtune_packed (attention per sample, train/packed_attention.py); else SDPA
- Liger kernels: on CUDA when installed
- frozen weights in bf16: when bf16 is on and the method saves only what it trains
- torch.compile: decided after two eager steps, from their measured time (lm_trainer.SpeedCallback)
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from lmtune.config.schema import RunConfig

PROMPT_LEARNING = ("prefix", "prompt", "ptuning")
# Methods whose saved result holds every weight (frozen ones included): those stay in float32.
SAVES_FROZEN_WEIGHTS = ("full", "freeze")


@dataclass
class SpeedPlan:
    packing: bool = False
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    liger: bool = False
    bf16_frozen: bool = False
    compile: bool | str = False  # True, False or "auto" (decided during training)
    reasons: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [f"{k}: {v}" for k, v in self.reasons.items()]


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def choose_attention(configured: str, *, device: str, packing: bool) -> str:
    """The attention kernel `model.attn_implementation` resolves to (the memory estimate asks too):
    flash-attn 2 on CUDA when installed, per-sample attention for packed rows on CPU, else SDPA."""
    if configured != "auto":
        return configured
    if device == "cuda":
        return "flash_attention_2" if installed("flash_attn") else "sdpa"
    return "lmtune_packed" if packing else "sdpa"


def plan_speed(cfg: RunConfig, *, device: str, bf16: bool) -> SpeedPlan:
    t, method = cfg.train, cfg.method.name
    p = SpeedPlan()
    if cfg.task == "sft":
        if cfg.data.packing == "auto":
            p.packing = method not in PROMPT_LEARNING
            why = "virtual tokens must start every sample" if not p.packing else "samples isolated per row"
            p.reasons["packing"] = f"{'on' if p.packing else 'off'} ({why})"
        else:
            p.packing = bool(cfg.data.packing)
    if t.gradient_checkpointing == "auto":
        from lmtune.plan.estimate import decide_checkpointing

        p.gradient_checkpointing, why = decide_checkpointing(cfg, device)
        p.reasons["gradient checkpointing"] = f"{'on' if p.gradient_checkpointing else 'off'} ({why})"
    else:
        p.gradient_checkpointing = bool(t.gradient_checkpointing)
    attn = p.attn_implementation = choose_attention(
        cfg.model.attn_implementation, device=device, packing=p.packing
    )
    if cfg.model.attn_implementation == "auto" and device == "cuda":
        p.reasons["attention"] = attn + ("" if attn == "flash_attention_2" else " (flash-attn not installed)")
    elif cfg.model.attn_implementation == "auto" and attn == "lmtune_packed":
        p.reasons["attention"] = "per packed sample (lmtune_packed)"
    if t.liger == "auto":
        p.liger = device == "cuda" and installed("liger_kernel")
        if device == "cuda":
            p.reasons["liger kernels"] = "on" if p.liger else "off (liger-kernel not installed)"
    else:
        p.liger = bool(t.liger)
    p.bf16_frozen = bf16 and t.bf16_frozen and method not in SAVES_FROZEN_WEIGHTS
    if p.bf16_frozen:
        p.reasons["frozen weights"] = "bf16 (trained weights stay float32)"
    p.compile = t.compile
    if t.compile == "auto" and COMPILE_SPEEDUP["cuda" if device == "cuda" else "cpu"] <= 1:
        p.compile = False
        p.reasons["torch.compile"] = "off (measured slower than eager on CPU; see docs/performance.md)"
    elif t.compile == "auto":
        p.reasons["torch.compile"] = "decided after 2 steps, from their measured speed"
    return p


def cast_frozen(model: Any, dtype: Any, *, source: Any) -> int:
    """Frozen parameters of dtype `source` to `dtype` in place (trained ones untouched); returns how many.

    Under bf16 autocast every float32 weight is cast to bf16 on each forward anyway; storing frozen
    ones in bf16 halves their memory and skips that cast. After training they go back to float32
    (now bf16-rounded), so generation without autocast mixes no dtypes; the saved result holds only
    trained weights, which never left float32.
    """
    n = 0
    for p in model.parameters():
        if not p.requires_grad and p.dtype == source:
            p.data = p.data.to(dtype)
            n += 1
    release_freed_memory()
    return n


def release_freed_memory() -> None:
    """Hand memory freed by the allocator back to the OS (glibc keeps freed blocks resident, so
    the float32 copies just replaced would otherwise still count in the process's RSS)."""
    import contextlib
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): nothing to do
            ctypes.CDLL("libc.so.6").malloc_trim(0)


# torch.compile: speed-up of a training step and compile seconds per decoder layer. CPU, measured on
# SmolLM2-135M + LoRA, bf16 autocast, 4x512 packed rows (docs/performance.md): eager 276 tok/s,
# compiled ~235 tok/s after ~150 s of compiling (oneDNN's bf16 matmuls are already what inductor
# calls), so auto never picks it on CPU. CUDA: the commonly reported gain, not measured here.
COMPILE_SPEEDUP = {"cpu": 0.85, "cuda": 1.3}
COMPILE_SECONDS_PER_LAYER = {"cpu": 5.0, "cuda": 1.5}
PAYBACK_MARGIN = 1.5


def compile_pays_back(
    step_seconds: float, steps_left: int, layers: int, device: str
) -> tuple[bool, float, float]:
    """(worth it, predicted seconds saved, predicted compile seconds)."""
    kind = "cuda" if device == "cuda" else "cpu"
    saved = step_seconds * steps_left * (1 - 1 / COMPILE_SPEEDUP[kind])  # negative: compiled is slower
    cost = COMPILE_SECONDS_PER_LAYER[kind] * layers
    return saved > PAYBACK_MARGIN * cost, saved, cost


def compile_decoder(model: Any) -> Any:
    """torch.compile the decoder stack in place (the module object, its weights and state_dict keys
    stay the same, so saving and adapters are unaffected)."""
    from lmtune.train.lm_loss import decoder_and_head

    decoder, _ = decoder_and_head(model)
    decoder.compile(dynamic=False)
    return decoder
