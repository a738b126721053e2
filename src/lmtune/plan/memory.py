"""Memory sizes and what the machine has: parsing `--memory 24GB`, printing bytes, reading
available and resident memory (CPU from /proc and the cgroup, CUDA from the driver)."""

from __future__ import annotations

import re
from pathlib import Path

from lmtune.errors import ConfigError, ModelError

# -- memory sizes -------------------------------------------------------------------------------
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)


def parse_memory(text: str) -> int:
    """'24GB' -> 24e9, '24GiB' -> 24 * 2**30, '1.5G' -> 1.5 * 2**30, '512MB' -> 512e6.

    A bare G/M (no B) is binary, as `free -g` prints it; GB is decimal, GiB binary. A number with
    no unit is refused: "24" is far more likely 24 GB with the unit forgotten than 24 bytes.
    """
    match = _MEMORY.match(str(text))
    if not match or not (match.group(2) or (match.group(4) and not match.group(3))):
        raise ConfigError(
            f"--memory '{text}' is not a memory size. Write a number with a unit: 24GB, 24GiB, 512MB or 1.5G."
        )
    number, unit, binary, byte = match.groups()
    base = 1024 if binary or (unit and not byte) else 1000
    value = int(float(number) * base ** "bkmgt".index(unit.lower() or "b"))
    if value <= 0:
        raise ConfigError(f"--memory '{text}' must be more than zero.")
    return value


def format_bytes(n: int) -> str:
    """Binary units, as `free -h` shows them: 1.50 GiB, 320 MiB."""
    if abs(n) >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if abs(n) >= 2**20:
        return f"{n / 2**20:.0f} MiB"
    return f"{n / 2**10:.0f} KiB"


# -- what the machine has ------------------------------------------------------------------------
def available_memory(device: str) -> int:
    """Bytes available to a new allocation on `device` now.

    CPU: MemAvailable from /proc/meminfo, capped by the cgroup's limit minus its usage when the
    process runs in a memory-limited container (v2 or v1). CUDA: free memory of the current GPU.
    """
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
    found = [x for x in (_proc_field("/proc/meminfo", "MemAvailable:"), _cgroup_room()) if x is not None]
    if not found:
        raise ModelError(
            "Cannot tell how much memory this machine has (no /proc/meminfo). Pass --memory 16GB."
        )
    return min(found)


def resident_memory() -> int:
    """This process's resident set size (VmRSS), in bytes; 0 where /proc is absent."""
    return _proc_field("/proc/self/status", "VmRSS:") or 0


def _proc_field(path: str, key: str) -> int | None:
    """A 'Key:  123 kB' line of a /proc file, in bytes."""
    try:
        line = next(x for x in Path(path).read_text().splitlines() if x.startswith(key))
        return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """limit - usage of this process's memory cgroup (v2, else v1), or None without a limit."""
    v1 = root / "memory"
    for limit_file, usage_file in [
        (root / "memory.max", root / "memory.current"),
        (v1 / "memory.limit_in_bytes", v1 / "memory.usage_in_bytes"),
    ]:
        try:
            limit_text, usage = limit_file.read_text().strip(), int(usage_file.read_text())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= 2**60:  # v1 says "no limit" with a huge number
            return None
        return max(int(limit_text) - usage, 0)
    return None
