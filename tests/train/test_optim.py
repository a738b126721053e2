"""Optimizers: LoRA+ learning-rate groups and the 8-bit AdamW, as the Trainer really builds them."""

from __future__ import annotations

import pytest

from lmtune.config.loader import validate_config
from lmtune.config.schema import MethodSection
from lmtune.methods.base import get_method
from lmtune.run.layout import RunDir
from lmtune.train.args import training_arguments
from lmtune.train.optim import build_optimizer


def cfg(tmp_path, method, **train):
    return validate_config(
        {
            "data": {"path": "x.jsonl"},
            "method": method,
            "train": {"lr": 1e-3, "bf16": False, **train},
            "output": {"dir": str(tmp_path)},
        }
    )


@pytest.fixture
def lora_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return get_method("lora").prepare(model, MethodSection(name="lora", r=4))


@pytest.mark.parametrize("optim", ["adamw", "adamw_8bit"])
def test_lora_plus_gives_b_matrices_ratio_times_the_lr(tmp_path, lora_model, optim):
    config = cfg(tmp_path, {"name": "lora", "r": 4, "lora_plus_ratio": 16}, optim=optim)
    optimizer = build_optimizer(lora_model, config)
    assert type(optimizer).__name__ == ("AdamW8bit" if optim == "adamw_8bit" else "AdamW")
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in lora_model.named_parameters():
        if "lora_B" in name:
            assert lr_of[id(p)] == pytest.approx(16e-3), name
        elif "lora_A" in name:
            assert lr_of[id(p)] == pytest.approx(1e-3), name
        else:
            assert id(p) not in lr_of, name  # frozen weights are not optimized


def test_without_lora_plus_the_trainer_builds_the_optimizer(tmp_path, lora_model):
    assert build_optimizer(lora_model, cfg(tmp_path, {"name": "lora"})) is None


def test_adamw_8bit_reaches_the_trainer(tmp_path, lora_model):
    from transformers import Trainer

    config = cfg(tmp_path, {"name": "lora"}, optim="adamw_8bit")
    args = training_arguments(config, RunDir(tmp_path), device="cpu", has_val=False)
    trainer = Trainer(model=lora_model, args=args)
    trainer.create_optimizer()
    assert type(trainer.optimizer).__module__.startswith("bitsandbytes.optim")


def test_paged_adamw_8bit_needs_cuda_and_names_the_fix(tmp_path, lora_model):
    """The paged optimizer (QLoRA's setting) pages its state through CUDA unified memory: on this
    CPU run it is refused before training, while the Trainer is told the bitsandbytes name."""
    from lmtune.errors import ConfigError

    config = cfg(tmp_path, {"name": "lora"}, optim="paged_adamw_8bit")
    assert (
        training_arguments(config, RunDir(tmp_path), device="cpu", has_val=False).optim == "paged_adamw_8bit"
    )
    with pytest.raises(ConfigError, match="paged_adamw_8bit .*needs a CUDA device.*train.optim: adamw"):
        build_optimizer(lora_model, config)
