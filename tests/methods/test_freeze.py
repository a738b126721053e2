"""Freeze: which layers train, and the mistakes a user can make naming them."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from lmtune.config.schema import MethodSection
from lmtune.errors import ConfigError
from lmtune.methods.base import get_method


@pytest.fixture
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_last_layers_and_extra_modules_train(model):
    opts = MethodSection(name="freeze", trainable_layers=1, extra_modules=["norm", "embed_tokens"])
    method = get_method("freeze")
    method.check(model, opts)
    names = trainable(method.prepare(model, opts))
    expected = {n for n, _ in model.named_parameters() if n.startswith("model.layers.1.")}
    assert names == expected | {"model.norm.weight", "model.embed_tokens.weight"}


def test_all_layers(model):
    opts = MethodSection(name="freeze", trainable_layers=2)
    names = trainable(get_method("freeze").prepare(model, opts))
    assert names == {n for n, _ in model.named_parameters() if n.startswith("model.layers.")}


def test_more_layers_than_the_model_has(model):
    with pytest.raises(ConfigError, match="trainable_layers is 5 but the model has 2 decoder layers"):
        get_method("freeze").check(model, MethodSection(name="freeze", trainable_layers=5))


def test_unknown_extra_module_lists_the_names(model):
    with pytest.raises(ConfigError) as err:
        get_method("freeze").check(model, MethodSection(name="freeze", extra_modules=["lm_haed"]))
    msg = str(err.value)
    assert "no module named 'lm_haed'" in msg and "lm_head" in msg and "q_proj" in msg
