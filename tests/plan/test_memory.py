"""Memory sizes and what the machine has (lmtune.train.memory)."""

from __future__ import annotations

import pytest

from lmtune.errors import ConfigError
from lmtune.plan import memory


@pytest.mark.parametrize(
    "text, expected",
    [
        ("24GB", 24 * 10**9),
        ("24GiB", 24 * 2**30),
        ("512MB", 512 * 10**6),
        ("1.5G", int(1.5 * 2**30)),
        ("2 gib", 2 * 2**30),
        ("100KiB", 102400),
        ("3000B", 3000),
    ],
)
def test_parse_memory(text, expected):
    assert memory.parse_memory(text) == expected


@pytest.mark.parametrize("text", ["24", "lots", "24iB", "0GB", "-1GB", "1.5 X", ""])
def test_parse_memory_refuses_with_the_accepted_forms(text):
    with pytest.raises(ConfigError, match="24GB|more than zero"):
        memory.parse_memory(text)


def test_available_memory_reads_meminfo_and_a_cgroup_limit(tmp_path):
    total = memory._proc_field("/proc/meminfo", "MemTotal:")
    assert 0 < memory.available_memory("cpu") <= total
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("1073741824\n")
    (v2 / "memory.current").write_text("73741824\n")
    assert memory._cgroup_room(v2) == 1_000_000_000
    (v2 / "memory.max").write_text("max\n")
    assert memory._cgroup_room(v2) is None
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("2000\n")
    (v1 / "memory.usage_in_bytes").write_text("500\n")
    assert memory._cgroup_room(tmp_path / "v1") == 1500
