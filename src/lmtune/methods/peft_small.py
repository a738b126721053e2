"""IA3 and LayerNorm tuning through PEFT: the smallest updates that still learn.

IA3 learns one scaling vector per adapted layer (keys, values and the MLP's down projection by
default); LN tuning trains only copies of the normalisation layers. Both save in PEFT's adapter
layout and can be merged into the base.
"""

from __future__ import annotations

import warnings
from typing import Any

from lmtune.methods.base import PeftMethod, register

# LN tuning warns on any norm class it does not list (e.g. LlamaRMSNorm); it only copies the module,
# and tests/methods/test_every_method.py shows RMSNorm copies train, save and reload exactly.
warnings.filterwarnings(
    "ignore", message="Unsupported layer type .*(RMSNorm|LayerNorm)", category=UserWarning
)


class _Mergeable(PeftMethod):
    mergeable = True


@register
class IA3(_Mergeable):
    name = "ia3"

    def peft_config(self, model: Any, opts: Any) -> Any:
        from peft import IA3Config, TaskType
        from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF

        targets = opts.target_modules
        feedforward = None  # PEFT's default for the architecture
        if isinstance(targets, list):
            # IA3 scales a feed-forward layer's input, others' output; PEFT wants the former named.
            default_ff = FF.get(getattr(model.config, "model_type", ""), [])
            feedforward = [t for t in targets if t in default_ff]
        return IA3Config(
            task_type=TaskType.CAUSAL_LM,
            target_modules=targets,
            feedforward_modules=feedforward,
            modules_to_save=opts.modules_to_save or None,
        )


@register
class LNTuning(_Mergeable):
    name = "ln_tuning"

    def peft_config(self, model: Any, opts: Any) -> Any:
        from peft import LNTuningConfig, TaskType

        return LNTuningConfig(task_type=TaskType.CAUSAL_LM, target_modules=opts.target_modules)
