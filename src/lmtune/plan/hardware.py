"""GPU specs and prices as data: `gpus.json` (memory, bf16 dense TFLOP/s, assumed MFU) and
`prices.yaml` (USD per GPU-hour, dated), which a user overrides with `--prices FILE`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError

HERE = Path(__file__).parent


@dataclass(frozen=True)
class Gpu:
    key: str
    name: str
    memory_mib: int
    bf16_tflops: float
    mfu: float

    @property
    def memory(self) -> int:
        return self.memory_mib * 2**20

    @property
    def flops(self) -> float:
        """FLOP/s a training step is assumed to reach: peak x MFU."""
        return self.bf16_tflops * 1e12 * self.mfu


@dataclass(frozen=True)
class Prices:
    per_gpu_hour: dict[str, float]
    date: str
    source: str
    file: str


def gpus() -> dict[str, Gpu]:
    rows = json.loads((HERE / "gpus.json").read_text())["gpus"]
    return {row["key"]: Gpu(**row) for row in rows}


def pick_gpus(names: list[str]) -> list[Gpu]:
    """The GPUs named (keys, comma-separated or repeated), in the table's order; all when none."""
    table = gpus()
    wanted = [n.strip().lower() for item in names for n in item.split(",") if n.strip()]
    for name in wanted:
        if name not in table:
            raise ConfigError(f"--gpu '{name}' is not a GPU lmtune knows. Known: {', '.join(table)}.")
    return [g for k, g in table.items() if not wanted or k in wanted]


def load_prices(file: Path | None = None) -> Prices:
    """The shipped price table, with a user's file over it (its keys win)."""
    import yaml

    shipped = yaml.safe_load((HERE / "prices.yaml").read_text())
    data, where = shipped, str(HERE / "prices.yaml")
    if file is not None:
        try:
            user: Any = yaml.safe_load(Path(file).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"--prices {file}: cannot read it as YAML ({err}).") from err
        table = user.get("per_gpu_hour") if isinstance(user, dict) else None
        if not isinstance(table, dict) or not all(isinstance(v, (int, float)) for v in table.values()):
            raise ConfigError(
                f"--prices {file}: expected a mapping 'per_gpu_hour: {{gpu key: USD per GPU-hour}}' "
                f"(and optionally 'date:'), e.g. per_gpu_hour: {{h100: 2.49}}."
            )
        data = {**shipped, **user, "per_gpu_hour": {**shipped["per_gpu_hour"], **table}}
        where = str(file)
    return Prices(
        {k.lower(): float(v) for k, v in data["per_gpu_hour"].items()},
        str(data.get("date", "undated")),
        str(data.get("source", "")),
        where,
    )
