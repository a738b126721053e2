"""IA3 and LayerNorm tuning through PEFT: the smallest updates that still learn.

IA3 learns one scaling vector per adapted layer (keys, values and the MLP's down projection by
default); LN tuning trains only copies of the normalisation layers. Both save in PEFT's adapter
layout and can be merged into the base.
"""

from __future__ import annotations

import warnings
from typing import Any

from lmtune.methods.base import PeftMethod, peft_task_type, register

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

    def peft_config(self, model: Any, opts: Any, task: str = "sft") -> Any:
        from peft import IA3Config
        from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF

        from lmtune.models.families import ia3_targets

        targets = opts.target_modules
        feedforward = None  # PEFT's default for the architecture
        default = ia3_targets(getattr(model.config, "model_type", None))
        if targets is None and default is not None:  # lmtune's row for the family (models/families.py)
            targets, feedforward = default
        elif isinstance(targets, list):
            # IA3 scales a feed-forward layer's input, others' output; PEFT wants the former named.
            default_ff = FF.get(getattr(model.config, "model_type", ""), [])
            feedforward = [t for t in targets if t in default_ff]
        return IA3Config(
            task_type=peft_task_type(task),
            target_modules=targets,
            feedforward_modules=feedforward,
            modules_to_save=list(opts.modules_to_save) or None,  # a copy: PEFT extends it for SEQ_CLS
        )


@register
class LNTuning(_Mergeable):
    name = "ln_tuning"

    def peft_config(self, model: Any, opts: Any, task: str = "sft") -> Any:
        from peft import LNTuningConfig
        from peft.utils import TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING as DEFAULTS

        targets = opts.target_modules
        if targets is None and getattr(model.config, "model_type", "") not in DEFAULTS:
            targets = norm_layer_names(model)  # PEFT has no default for e.g. BERT encoders
        return LNTuningConfig(task_type=peft_task_type(task), target_modules=targets)


def norm_layer_names(model: Any) -> list[str] | None:
    """Leaf names of the model's normalisation layers (BERT: LayerNorm), or None if it has none."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name and type(module).__name__.endswith(("LayerNorm", "RMSNorm"))
    }
    return sorted(names) or None
