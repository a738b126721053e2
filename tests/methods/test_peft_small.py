"""IA3 and LN tuning: which modules they adapt, by default and when named."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from lmtune.config.schema import MethodSection
from lmtune.methods.base import get_method


@pytest.fixture
def base(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def adapted(model, attr):
    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, attr)}


def test_ia3_defaults_scale_keys_values_and_the_mlp_input(base):
    model = get_method("ia3").prepare(base, MethodSection(name="ia3"))
    assert adapted(model, "ia3_l") == {"k_proj", "v_proj", "down_proj"}
    down = model.base_model.model.model.layers[0].mlp.down_proj
    assert down.is_feedforward and down.ia3_l["default"].shape == (1, down.in_features)  # scales the input
    v = model.base_model.model.model.layers[0].self_attn.v_proj
    assert not v.is_feedforward and v.ia3_l["default"].shape == (v.out_features, 1)  # scales the output


def test_ia3_named_targets_keep_feedforward_semantics(base):
    model = get_method("ia3").prepare(base, MethodSection(name="ia3", target_modules=["q_proj", "down_proj"]))
    assert adapted(model, "ia3_l") == {"q_proj", "down_proj"}
    assert model.base_model.model.model.layers[1].mlp.down_proj.is_feedforward


def test_ln_tuning_trains_copies_of_the_norms_only(base):
    model = get_method("ln_tuning").prepare(base, MethodSection(name="ln_tuning"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("ln_tuning_layers" in n and "norm" in n for n in trainable)
    # one trainable copy per RMSNorm: 2 per layer and the final norm
    assert len(trainable) == 2 * 2 + 1
