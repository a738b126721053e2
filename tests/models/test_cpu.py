"""bf16 `auto` follows the CPU's flags, unless oneDNN is capped below bf16 (an emulated AVX2 CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmtune.models import cpu
from lmtune.models.load import device_supports


@pytest.fixture(autouse=True)
def fresh_answer():
    cpu.cpu_has_native_bf16.cache_clear()
    yield
    cpu.cpu_has_native_bf16.cache_clear()


def flags_say_native() -> bool:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return "avx512_bf16" in text or "amx_bf16" in text


@pytest.mark.parametrize("isa", ["AVX2", "avx2", "AVX512_CORE", "SSE41"])
def test_a_cap_below_bf16_means_emulated(monkeypatch, isa):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert cpu.cpu_has_native_bf16() is False
    assert device_supports("bfloat16", "cpu") is False
    assert device_supports("float32", "cpu") is True


@pytest.mark.parametrize("isa", [None, "AVX512_CORE_BF16", "ALL"])
def test_otherwise_the_flags_decide(monkeypatch, isa):
    if isa is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert cpu.cpu_has_native_bf16() is flags_say_native()
