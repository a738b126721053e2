"""Optimizers the Trainer cannot build from its arguments alone.

LoRA+ gives the B matrices a learning rate `lora_plus_ratio` times that of A (PEFT's
`create_loraplus_optimizer`); everything else uses the Trainer's own optimizer (`train.optim`).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from lmtune.config.schema import RunConfig
from lmtune.errors import ConfigError


def require_bitsandbytes(what: str) -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"{what} needs the bitsandbytes package, which is not installed. "
            "Install it (pip install bitsandbytes) or choose another setting."
        )


def build_optimizer(model: Any, cfg: RunConfig) -> Any | None:
    """The optimizer to hand the Trainer, or None to let it build its own from `train.optim`."""
    if cfg.train.optim != "adamw":
        require_bitsandbytes(f"train.optim: {cfg.train.optim}")
    if cfg.train.optim == "paged_adamw_8bit" and next(model.parameters()).device.type != "cuda":
        raise ConfigError(
            "train.optim: paged_adamw_8bit pages optimizer state between GPU and CPU memory and needs a "
            "CUDA device; this run is on the CPU. Use train.optim: adamw (or adamw_8bit)."
        )
    ratio = cfg.method.lora_plus_ratio
    if ratio is None:
        return None
    from peft.optimizers import create_loraplus_optimizer

    if cfg.train.optim != "adamw":
        import bitsandbytes as bnb

        optimizer_cls = (
            bnb.optim.PagedAdamW8bit if cfg.train.optim.startswith("paged") else bnb.optim.AdamW8bit
        )
    else:
        import torch

        optimizer_cls = torch.optim.AdamW
    return create_loraplus_optimizer(
        model,
        optimizer_cls=optimizer_cls,
        lr=cfg.train.lr,
        loraplus_lr_ratio=ratio,
        weight_decay=cfg.train.weight_decay,
    )
