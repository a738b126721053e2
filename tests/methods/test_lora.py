"""LoRA options and QLoRA loading, each checked against what the option means."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from lmtune.config.schema import MethodSection
from lmtune.errors import ConfigError, ModelError
from lmtune.methods.base import get_method
from lmtune.models.load import count_parameters, load_causal_lm
from lmtune.models.resolve import resolve_model_ref


def prepared(model_dir, **opts):
    method = get_method(opts.get("name", "lora"))
    opts = MethodSection(**{"name": "lora", "r": 4, **opts})
    base = load_causal_lm(
        resolve_model_ref(str(model_dir)), dtype="float32", quiet=True, **method.load_kwargs(opts, bf16=False)
    )
    return method, opts, method.prepare(base, opts)


def lora_layer(model):
    return model.base_model.model.model.layers[0].self_attn.q_proj


@pytest.mark.parametrize(("rslora", "scaling"), [(False, 32 / 4), (True, 32 / math.sqrt(4))])
def test_rslora_scaling(tiny_model_dir, rslora, scaling):
    _, _, model = prepared(tiny_model_dir, use_rslora=rslora)
    assert lora_layer(model).scaling["default"] == pytest.approx(scaling)


def test_dora_learns_a_magnitude_per_output_feature(tiny_model_dir):
    _, _, model = prepared(tiny_model_dir, use_dora=True)
    magnitude = lora_layer(model).lora_magnitude_vector["default"].weight
    assert magnitude.requires_grad and magnitude.shape == (lora_layer(model).base_layer.out_features,)
    # DoRA starts at the base weight's column norms, so the model starts unchanged.
    assert torch.allclose(magnitude, lora_layer(model).base_layer.weight.norm(dim=1), atol=1e-6)


def test_default_targets_are_all_linear_but_the_head(tiny_model_dir):
    _, _, model = prepared(tiny_model_dir)
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_save_a_plain_lora_for_the_original_base(tiny_model_dir, tmp_path, init):
    method, opts, model = prepared(tiny_model_dir, init=init)
    with torch.no_grad():  # stand-in for training: move the adapter off its starting point
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(0.01 * torch.randn_like(p))
    ids = torch.tensor([[1, 7, 42, 99]])
    expected = model.eval()(ids).logits  # eval: no LoRA dropout
    method.save(model, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True
    assert not method._initial_adapter.parent.exists()  # the temporary starting point is cleaned up
    reloaded = method.load(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path)
    torch.testing.assert_close(reloaded(ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_qlora_4bit_base(tiny_model_dir):
    import bitsandbytes as bnb

    _, _, model = prepared(tiny_model_dir, name="qlora", quant_type="fp4", double_quant=False)
    base_layer = lora_layer(model).base_layer
    assert isinstance(base_layer, bnb.nn.Linear4bit)
    assert base_layer.weight.quant_state.quant_type == "fp4" and base_layer.weight.quant_state.nested is False
    assert base_layer.compute_dtype == torch.float32
    # Our count unpacks 4-bit storage the way PEFT's own count does.
    peft_trainable, peft_total = model.get_nb_trainable_parameters()
    assert count_parameters(model) == (peft_total, peft_trainable)
    assert (
        peft_total
        == count_parameters(AutoModelForCausalLM.from_pretrained(tiny_model_dir))[0] + peft_trainable
    )


def test_qlora_defaults_nf4_double_quant_and_bf16_compute(tiny_model_dir):
    method = get_method("qlora")
    q = method.load_kwargs(MethodSection(name="qlora"), bf16=True)["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16


def test_qlora_8bit_base(tiny_model_dir):
    import bitsandbytes as bnb

    _, _, model = prepared(tiny_model_dir, name="qlora", bits=8)
    assert isinstance(lora_layer(model).base_layer, bnb.nn.Linear8bitLt)


def test_qlora_needs_bitsandbytes(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a)
    )
    with pytest.raises(
        ConfigError, match=r"method.name: qlora needs the bitsandbytes package.*pip install bitsandbytes"
    ):
        get_method("qlora").load_kwargs(MethodSection(name="qlora"), bf16=False)


def test_qlora_on_a_gguf_file_says_to_import_it_first():
    from tests.conftest import smollm2_gguf_path

    ref = resolve_model_ref(str(smollm2_gguf_path()))
    kwargs = get_method("qlora").load_kwargs(MethodSection(name="qlora"), bf16=False)
    with pytest.raises(ModelError, match="lmtune models import-gguf"):
        load_causal_lm(ref, **kwargs)


def test_qlora_gradients_survive_evaluation_passes(tiny_model_dir):
    """Eval-mode forwards (the runner's base-model checks before `prepare`, its evaluation before
    training) must not change the gradients: compared with a model that never ran in eval mode."""
    ids = torch.tensor([[1, 7, 42, 99, 5, 6]])

    def model_and_grads(evaluate: bool):
        method = get_method("qlora")
        opts = MethodSection(name="qlora", r=4, dropout=0.0)
        ref = resolve_model_ref(str(tiny_model_dir))
        base = load_causal_lm(ref, dtype="float32", quiet=True, **method.load_kwargs(opts, bf16=False))
        method.check(base, opts)
        if evaluate:
            with torch.no_grad():
                base.eval()(input_ids=ids)
        torch.manual_seed(0)
        model = method.prepare(base, opts)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
        if evaluate:
            with torch.no_grad():
                model.eval()(input_ids=ids)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    clean, evaluated = model_and_grads(False), model_and_grads(True)
    assert clean.keys() == evaluated.keys() and len(clean) == 2 * 7 * 2
    for n in clean:
        assert torch.equal(clean[n], evaluated[n]), n
