"""Full fine-tuning: every weight trains; the run directory holds a complete model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune.methods.base import Method, register


@register
class Full(Method):
    name = "full"
    mergeable = True  # nothing to merge: the weights are already the model
    needs_base = False

    def prepare(self, model: Any, cfg: Any, *, task: str = "sft") -> Any:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def load(self, base: Any, run_dir: Path, *, task: str = "sft") -> Any:
        return base
