"""Whether this CPU multiplies bfloat16 natively: it decides bf16 `auto` in training and loading."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

# oneDNN's instruction-set caps (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: bf16 is emulated there
_NO_BF16_ISAS = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def bf16_capped() -> bool:
    """oneDNN, which runs torch's bf16 matmuls on CPU, is capped below bf16 with
    `ONEDNN_MAX_CPU_ISA` (as benchmarks emulating an AVX2-only CPU do): the CPU's flags say native
    bf16, the matmuls are emulated."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _NO_BF16_ISAS


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX, not capped: bf16 matmuls run natively instead of being emulated (slower
    than float32)."""
    if bf16_capped():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
