"""Config -> TrainingArguments: values pass through unchanged; derived ones are explicit."""

from __future__ import annotations

import pytest

from lmtune.config.loader import validate_config
from lmtune.run.layout import RunDir
from lmtune.train.args import training_arguments, use_bf16


def test_values_pass_through(tmp_path):
    cfg = validate_config(
        {
            "data": {"path": "x"},
            "train": {
                "epochs": 2,
                "batch_size": 3,
                "grad_accum": 5,
                "lr": 3e-4,
                "warmup_ratio": 0.2,
                "max_grad_norm": 0.5,
                "seed": 7,
                "bf16": False,
                "eval_steps": 4,
                "save_steps": 8,
                "save_total_limit": 3,
                "scheduler": "linear",
            },
        }
    )
    args = training_arguments(cfg, RunDir(tmp_path), device="cpu", has_val=True)
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.gradient_accumulation_steps) == (
        2,
        3,
        5,
    )
    assert args.learning_rate == pytest.approx(3e-4) and args.get_warmup_steps(100) == 20
    assert (args.max_grad_norm, args.seed, args.bf16) == (0.5, 7, False)
    assert args.eval_strategy == "steps" and args.eval_steps == 4
    assert args.save_strategy == "steps" and args.save_steps == 8 and args.save_total_limit == 3
    assert args.lr_scheduler_type == "linear" and args.output_dir == str(tmp_path / "checkpoints")
    assert args.include_num_input_tokens_seen == "non_padding"
    no_val = training_arguments(cfg, RunDir(tmp_path), device="cpu", has_val=False)
    assert no_val.eval_strategy == "no"


def test_bf16_auto_follows_the_hardware(monkeypatch):
    import lmtune.train.args as mod

    monkeypatch.setattr(mod, "cpu_has_native_bf16", lambda: True)
    assert use_bf16("auto", "cpu") is True
    monkeypatch.setattr(mod, "cpu_has_native_bf16", lambda: False)
    assert use_bf16("auto", "cpu") is False
    assert use_bf16(True, "cpu") is True and use_bf16(False, "cpu") is False
