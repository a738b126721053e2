"""BitFit: biases only; a bias-less (Llama) model is refused before anything trains."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmtune.config.loader import validate_config
from lmtune.config.schema import MethodSection
from lmtune.errors import ConfigError, ModelError
from lmtune.methods.base import get_method
from lmtune.train.runner import train


def test_llama_is_refused_up_front_with_alternatives(tiny_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data.write_text(json.dumps(row) + "\n")
    cfg = validate_config(
        {
            "model": {"name": str(tiny_model_dir)},
            "data": {"path": str(data)},
            "method": {"name": "bitfit"},
            "train": {"max_steps": 1, "bf16": False},
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    with pytest.raises(ConfigError) as err:
        train(cfg)
    msg = str(err.value)
    assert "has none" in msg and "llama" in msg and "ln_tuning" in msg and "lora" in msg
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before training


def test_only_biases_train_and_reload(tiny_qwen2_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
    method = get_method("bitfit")
    opts = MethodSection(name="bitfit")
    method.check(model, opts)
    model = method.prepare(model, opts)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    modules_with_bias = {
        n for n, m in model.named_modules() if isinstance(getattr(m, "bias", None), torch.Tensor)
    }
    assert modules_with_bias and trainable == {f"{n}.bias" for n in modules_with_bias}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    method.save(model, tmp_path)
    fresh = method.load(AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir), tmp_path)
    ids = torch.tensor([[1, 5, 9, 20]])
    assert torch.equal(fresh(ids).logits, model(ids).logits)


def test_weights_from_another_model_are_refused(tiny_qwen2_dir, tiny_model_dir, tmp_path):
    qwen = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
    get_method("bitfit").save(qwen, tmp_path)
    with pytest.raises(ModelError, match="does not match the base model's biases"):
        get_method("bitfit").load(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path)
