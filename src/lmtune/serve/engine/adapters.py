"""Several LoRA runs of one base model served from one copy of the base (PEFT multi-adapter).

`lmtune serve runs/a runs/b runs/c`: runs whose marker says method "lora" (no DoRA, no
modules_to_save, which PEFT's mixed-batch forward cannot route per row) on the same base model and
precision are grouped. The first run loads as usual (base + adapter "default"); each other run is
`load_adapter`-ed onto the same PeftModel under its own name. All of a group's model ids share one
scheduler, and a batch mixes adapters: every forward passes PEFT's `adapter_names=[one per row]`,
so each row goes through its own LoRA (PEFT's mixed-batch inference).

Anything else (full fine-tunes, other methods, a plain model folder) loads as its own model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.run.layout import is_run_dir, read_marker


@dataclass
class Group:
    """Targets loaded together: one target alone, or LoRA runs sharing a base."""

    targets: list[int] = field(default_factory=list)  # indexes into the command line's targets
    key: tuple | None = None  # (base model, bf16) for a LoRA group; None for a target alone


def lora_key(target: str) -> tuple | None:
    """What must match for LoRA runs to share a base, or None if the target cannot share one."""
    if not is_run_dir(target):
        return None
    info = read_marker(target)
    if info.get("method") != "lora" or info.get("task", "sft") != "sft":
        return None
    try:
        config = json.loads((Path(target) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if config.get("use_dora") or config.get("modules_to_save"):
        return None  # PEFT's per-row routing covers plain LoRA layers only
    return (str(info.get("base_model")), bool(info.get("bf16", False)))


def group_targets(targets: list[str]) -> list[Group]:
    """Targets in command-line order, LoRA runs on the same base gathered into one group."""
    groups: list[Group] = []
    by_key: dict[tuple, Group] = {}
    for i, target in enumerate(targets):
        key = lora_key(target)
        if key is not None and key in by_key:
            by_key[key].targets.append(i)
            continue
        group = Group([i], key)
        groups.append(group)
        if key is not None:
            by_key[key] = group
    return groups


def add_adapter(model: Any, run_dir: str, name: str) -> int:
    """Load another LoRA run onto `model` (a PeftModel) as adapter `name`; returns the bytes it added."""
    model.load_adapter(run_dir, adapter_name=name, is_trainable=False)
    return adapter_bytes(model, name)


def adapter_bytes(model: Any, name: str) -> int:
    """Bytes of adapter `name`'s weights in `model`."""
    marker = f".{name}."
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if marker in n)
