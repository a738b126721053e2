"""Bottleneck adapters on the tiny random Llama: identity at start, the right shapes and places,
only the adapters train, the hooked modules compute what the papers describe, and a run saves and
reloads to the very same logits."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import train_steps

from lmtune.errors import ConfigError, LmtuneError, ModelError
from lmtune.methods.adapter import CONFIG, WEIGHTS, Bottleneck, adapter_state
from lmtune.methods.base import ensure_mergeable, get_method, method_options

HIDDEN, LAYERS = 64, 2


def opts(**kw):
    return method_options("adapter", kw)


@pytest.fixture
def base(tiny_model_and_tokenizer):
    """A fresh copy of the tiny model per test (prepare changes the model in place)."""
    return copy.deepcopy(tiny_model_and_tokenizer[0]).eval()


@pytest.fixture(scope="module")
def batch(tiny_model_and_tokenizer):
    tok = tiny_model_and_tokenizer[1]
    enc = tok(["What is 2 plus 3? It is 5.", "The cat sat on the mat."], return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {**enc, "labels": labels}


def adapters(model) -> dict[str, Bottleneck]:
    return {n: m for n, m in model.named_modules() if isinstance(m, Bottleneck)}


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def perturb(model, seed: int = 0) -> None:
    """Non-zero adapter weights, so tests see the adapters act (they start as the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_state(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_registered_and_not_mergeable():
    method = get_method("adapter")
    assert (method.name, method.mergeable, method.needs_base) == ("adapter", False, True)
    with pytest.raises(ConfigError, match="cannot be folded"):
        ensure_mergeable("adapter")


@pytest.mark.parametrize("kind", ["houlsby", "pfeiffer"])
def test_identity_at_init(base, batch, kind):
    before = logits(base, batch)
    model = get_method("adapter").prepare(base, opts(adapter_type=kind, non_linearity="gelu"))
    assert torch.equal(logits(model, batch), before)


def test_placement(base):
    houlsby = get_method("adapter").prepare(copy.deepcopy(base), opts(adapter_type="houlsby"))
    assert sorted(adapters(houlsby)) == sorted(
        f"model.layers.{i}.{place}.bottleneck_adapter"
        for i in range(LAYERS)
        for place in ("self_attn", "mlp")
    )
    pfeiffer = get_method("adapter").prepare(base, opts(adapter_type="pfeiffer"))
    assert sorted(adapters(pfeiffer)) == [f"model.layers.{i}.mlp.bottleneck_adapter" for i in range(LAYERS)]


@pytest.mark.parametrize(
    ("kw", "size"),
    [
        ({}, HIDDEN // 16),
        ({"reduction_factor": 8}, 8),
        ({"reduction_factor": 1000}, 1),
        ({"bottleneck_size": 5, "reduction_factor": 2}, 5),
    ],
)
def test_bottleneck_size(base, kw, size):
    model = get_method("adapter").prepare(base, opts(**kw))
    for a in adapters(model).values():
        assert a.down.weight.shape == (size, HIDDEN) and a.up.weight.shape == (HIDDEN, size)
        assert a.down.bias.shape == (size,) and a.up.bias.shape == (HIDDEN,)


def test_only_adapters_train(base):
    model = get_method("adapter").prepare(base, opts(adapter_type="houlsby", bottleneck_size=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_state(model))
    assert len(trainable) == 4 * 2 * LAYERS  # down/up weight and bias, two places, each layer
    assert all(p.dtype == torch.float32 for p in adapter_state(model).values())


def test_training_lowers_loss_and_leaves_base_alone(base, batch):
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = get_method("adapter").prepare(base, opts(adapter_type="houlsby"))
    losses = train_steps(model, batch, steps=5)
    assert losses[-1] < losses[0] - 0.1, losses
    state = dict(model.named_parameters())
    assert set(state) - set(frozen) == set(adapter_state(model))
    for name, before in frozen.items():
        assert torch.equal(state[name], before), name
    assert any(a.up.weight.abs().sum() > 0 for a in adapters(model).values())


def test_hooked_modules_compute_the_bottleneck(base):
    """Recompute one layer's MLP and attention outputs plus the adapter by hand."""
    model = get_method("adapter").prepare(base, opts(adapter_type="houlsby", non_linearity="tanh"))
    perturb(model)
    layer = model.model.layers[0]
    x = torch.randn(2, 5, HIDDEN, generator=torch.Generator().manual_seed(3))

    def by_hand(a, y):
        return y + F.linear(torch.tanh(F.linear(y, a.down.weight, a.down.bias)), a.up.weight, a.up.bias)

    m = layer.mlp
    mlp_out = F.linear(
        F.silu(F.linear(x, m.gate_proj.weight)) * F.linear(x, m.up_proj.weight), m.down_proj.weight
    )
    with torch.no_grad():
        torch.testing.assert_close(m(x), by_hand(m.bottleneck_adapter, mlp_out))
        pos = model.model.rotary_emb(x, torch.arange(5).unsqueeze(0))
        plain, _ = layer.self_attn.forward(x, position_embeddings=pos, attention_mask=None)  # no hooks
        hooked, _ = layer.self_attn(x, position_embeddings=pos, attention_mask=None)
        torch.testing.assert_close(hooked, by_hand(layer.self_attn.bottleneck_adapter, plain))
        assert not torch.allclose(hooked, plain)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(base, batch, reentrant):
    model = get_method("adapter").prepare(base, opts(adapter_type="houlsby"))
    perturb(model)
    model.train()

    def grads():
        model.zero_grad()
        model(**batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    assert model.model.layers[0].gradient_checkpointing
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name, g in plain.items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], g, msg=name)


def test_save_then_load_on_a_fresh_base(base, batch, tiny_model_and_tokenizer, tmp_path):
    method = get_method("adapter")
    model = method.prepare(base, opts(adapter_type="houlsby", bottleneck_size=6, non_linearity="silu"))
    perturb(model)
    method.save(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG, WEIGHTS])
    info = json.loads((tmp_path / CONFIG).read_text())
    assert info["bottleneck_size"] == 6 and info["hidden_size"] == HIDDEN and info["format_version"] == 1
    assert (info["adapter_type"], info["non_linearity"]) == ("houlsby", "silu")
    fresh = copy.deepcopy(tiny_model_and_tokenizer[0]).eval()
    loaded = method.load(fresh, tmp_path)
    assert torch.equal(logits(loaded, batch), logits(model, batch))
    assert not any(p.requires_grad for p in loaded.parameters())


@pytest.fixture
def saved(base, tmp_path):
    method = get_method("adapter")
    model = method.prepare(base, opts())
    method.save(model, tmp_path)
    return tmp_path


def _load(tiny_model_and_tokenizer, run_dir):
    return get_method("adapter").load(copy.deepcopy(tiny_model_and_tokenizer[0]), run_dir)


def test_corrupted_weights_file(saved, tiny_model_and_tokenizer):
    (saved / WEIGHTS).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match=WEIGHTS.replace(".", r"\.")):
        _load(tiny_model_and_tokenizer, saved)


def test_mismatched_weights_file(saved, tiny_model_and_tokenizer):
    from safetensors.torch import load_file, save_file

    state = load_file(str(saved / WEIGHTS))
    state["model.layers.7.mlp.bottleneck_adapter.up.bias"] = state.pop(
        "model.layers.1.mlp.bottleneck_adapter.up.bias"
    )
    save_file(state, str(saved / WEIGHTS))
    with pytest.raises(
        ModelError, match=r"(?s)bottleneck_adapter\.safetensors.*missing.*layers\.1.*unexpected.*layers\.7"
    ):
        _load(tiny_model_and_tokenizer, saved)


def test_wrong_shapes_and_bad_config(saved, tiny_model_and_tokenizer):
    info = json.loads((saved / CONFIG).read_text())
    (saved / CONFIG).write_text(json.dumps({**info, "bottleneck_size": 7}))
    with pytest.raises(ModelError, match="wrong shape"):
        _load(tiny_model_and_tokenizer, saved)
    (saved / CONFIG).write_text(json.dumps({**info, "hidden_size": 4096}))
    with pytest.raises(ModelError, match="hidden size 4096"):
        _load(tiny_model_and_tokenizer, saved)
    (saved / CONFIG).write_text(json.dumps({**info, "non_linearity": "swish", "lmtune_version": "9.0"}))
    with pytest.raises(ModelError, match="'swish'.*lmtune 9.0"):
        _load(tiny_model_and_tokenizer, saved)
    (saved / CONFIG).write_text("{not json")
    with pytest.raises(ModelError, match=CONFIG.replace(".", r"\.")):
        _load(tiny_model_and_tokenizer, saved)
    (saved / CONFIG).unlink()
    with pytest.raises(LmtuneError, match=CONFIG.replace(".", r"\.")):
        _load(tiny_model_and_tokenizer, saved)


def test_architecture_without_decoder_layers_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    with pytest.raises(ConfigError, match="GPT2LMHeadModel"):
        get_method("adapter").check(gpt2, opts())


def test_trainer_run_reloads_to_the_same_logits(tiny_model_dir, tiny_model_and_tokenizer, batch, tmp_path):
    from lmtune.config.loader import validate_config
    from lmtune.run.load import load_target
    from lmtune.train.runner import train

    data = tmp_path / "train.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {a} plus 1?"},
                {"role": "assistant", "content": f"{a + 1}."},
            ]
        }
        for a in range(8)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = validate_config(
        {
            "model": {"name": str(tiny_model_dir)},
            "data": {"path": str(data)},
            "method": {"name": "adapter", "adapter_type": "houlsby", "bottleneck_size": 8},
            "train": {
                "max_steps": 2,
                "lr": 1e-2,
                "warmup_ratio": 0,
                "batch_size": 4,
                "bf16": False,
                "gradient_checkpointing": True,
            },
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    result = train(cfg)
    assert not (result.run_dir / "model.safetensors").exists()
    assert (result.run_dir / WEIGHTS).exists()
    assert result.summary["parameters"]["trainable"] == 2 * LAYERS * (2 * 8 * HIDDEN + 8 + HIDDEN)
    trained = result.model.eval()
    assert any(a.up.weight.abs().sum() > 0 for a in adapters(trained).values())
    loaded = load_target(str(result.run_dir), quiet=True).model
    assert torch.equal(logits(loaded, batch), logits(trained, batch))
    assert not torch.equal(logits(trained, batch), logits(tiny_model_and_tokenizer[0], batch))
