"""LoRA and QLoRA through PEFT: low-rank updates on chosen linear layers, base weights frozen.

The run directory gets PEFT's standard adapter layout (adapter_config.json +
adapter_model.safetensors), so `PeftModel.from_pretrained(base, run_dir)` loads it anywhere.
Options: rank/alpha/dropout, target modules, rsLoRA, DoRA, LoRA+ (an optimizer setting, see
train/optim.py), modules_to_save, and the initialisation. PiSSA and OLoRA start by rewriting the
base weights (W = W_res + B A); on save the adapter is converted to a plain LoRA of rank 2r that
applies to the *original* base, so the run directory never depends on a modified base model.
QLoRA is the same adapter on a base loaded in 4-bit (NF4/FP4, optional double quantization) or
8-bit by bitsandbytes.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from lmtune.methods.base import PeftMethod, peft_task_type, register

# PEFT advises converting PiSSA/OLoRA adapters to plain LoRA; `save` below always does.
warnings.filterwarnings("ignore", message="(PiSSA|OLoRA) changes the base weights", category=UserWarning)

INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}


@register
class LoRA(PeftMethod):
    name = "lora"
    mergeable = True

    def __init__(self) -> None:
        self._initial_adapter: Path | None = None  # PiSSA/OLoRA starting point, for the save conversion

    def peft_config(self, model: Any, opts: Any, task: str = "sft") -> Any:
        from peft import LoraConfig

        from lmtune.models.families import lora_targets

        # The family's attention + MLP projections (models/families.py), all-linear for an architecture
        # without a row; never the output head (for SEQ_CLS PEFT trains and saves it in full).
        return LoraConfig(
            task_type=peft_task_type(task),
            r=opts.r,
            lora_alpha=opts.alpha,
            lora_dropout=opts.dropout,
            target_modules=opts.target_modules or lora_targets(getattr(model.config, "model_type", None)),
            use_rslora=opts.use_rslora,
            use_dora=opts.use_dora,
            init_lora_weights=INIT[opts.init],
            modules_to_save=list(opts.modules_to_save) or None,  # a copy: PEFT extends it
            bias="none",
        )

    def prepare(self, model: Any, opts: Any, *, task: str = "sft") -> Any:
        peft_model = super().prepare(model, opts, task=task)
        if opts.init in ("pissa", "olora"):
            # PEFT's conversion wants the initial adapter saved as a plain LoRA (init flag True).
            self._initial_adapter = Path(tempfile.mkdtemp(prefix="lmtune-lora-init-")) / "initial"
            config = peft_model.peft_config["default"]
            config.init_lora_weights = True
            peft_model.save_pretrained(self._initial_adapter)
            config.init_lora_weights = INIT[opts.init]
        return peft_model

    def save(self, model: Any, out_dir: Path, *, state_dict: dict[str, Any] | None = None) -> None:
        if self._initial_adapter is None:
            model.save_pretrained(out_dir, state_dict=state_dict)
            return
        model.save_pretrained(
            out_dir,
            state_dict=state_dict,
            path_initial_model_for_weight_conversion=str(self._initial_adapter),
        )
        shutil.rmtree(self._initial_adapter.parent, ignore_errors=True)


@register
class QLoRA(LoRA):
    name = "qlora"

    def load_kwargs(self, opts: Any, *, bf16: bool) -> dict[str, Any]:
        from lmtune.train.optim import require_bitsandbytes

        require_bitsandbytes("method.name: qlora")
        import torch
        from transformers import BitsAndBytesConfig

        if opts.bits == 8:
            return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
        compute = opts.compute_dtype if opts.compute_dtype != "auto" else ("bfloat16" if bf16 else "float32")
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=opts.quant_type,
                bnb_4bit_use_double_quant=opts.double_quant,
                bnb_4bit_compute_dtype=getattr(torch, compute),
            )
        }

    def check(self, model: Any, opts: Any) -> None:
        _no_cpu_repacking(model)  # before anything (the base-model checks) runs it in eval mode

    def prepare(self, model: Any, opts: Any, *, task: str = "sft") -> Any:
        from peft import prepare_model_for_kbit_training

        # Norms and embeddings go to float32 for stable training; gradient checkpointing is the
        # Trainer's to switch on (train.gradient_checkpointing), not this helper's.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return super().prepare(_no_cpu_repacking(model), opts, task=task)

    def load(self, base: Any, run_dir: Path, *, task: str = "sft") -> Any:
        return super().load(_no_cpu_repacking(base), run_dir, task=task)


def _no_cpu_repacking(model: Any) -> Any:
    """Keep bitsandbytes' 4-bit CPU layers on their trainable, compute_dtype-honouring path.

    bitsandbytes 0.50 repacks 4-bit weights for a bf16 CPU kernel on the first eval-mode forward
    (our evaluation before training) and never unpacks them for training. That kernel has no
    backward, so gradients would silently stop flowing through the base, and it computes in bf16
    whatever compute_dtype says, so a reloaded run would not answer like the trained model.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model
