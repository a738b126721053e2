"""LoRA through PEFT: low-rank updates on chosen linear layers, base weights frozen.

The run directory gets PEFT's standard adapter layout (adapter_config.json +
adapter_model.safetensors), so `PeftModel.from_pretrained(base, run_dir)` loads it anywhere.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from lmtune.methods.base import Method, register

# PEFT reads transformers' deprecated `is_gradient_checkpointing`; the warning is theirs, not the user's.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@register
class LoRA(Method):
    name = "lora"
    mergeable = True
    needs_base = True

    def prepare(self, model: Any, cfg: Any) -> Any:
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=cfg.target_modules,
            bias="none",
        )
        return get_peft_model(model, config)

    def load(self, base: Any, run_dir: Path) -> Any:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(run_dir))
