"""The model spec computed from config numbers (no torch) against the one read off the model built
on the meta device with the method really applied (PEFT): the same counts, layer by layer."""

from __future__ import annotations

import pytest
from tests.conftest import TINY

from lmtune.config.loader import validate_config
from lmtune.plan import estimate as est
from lmtune.plan.source import model_source
from lmtune.plan.spec import spec_from_config, spec_from_model

SMALL = {**TINY, "vocab_size": 512}
FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "llama-tied-bias": (
        "LlamaConfig",
        {"tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True},
    ),
    "qwen2": ("Qwen2Config", {}),  # q/k/v biases
    "qwen3": ("Qwen3Config", {"head_dim": 32}),  # q/k norms, head_dim apart from hidden / heads
    "mistral": ("MistralConfig", {"tie_word_embeddings": True}),
}
METHODS = {
    "full": {"name": "full"},
    "freeze": {"name": "freeze", "trainable_layers": 1},
    "lora-all": {"name": "lora", "r": 4, "dropout": 0.1},
    "lora-qv": {"name": "lora", "r": 8, "target_modules": ["q_proj", "v_proj"], "dropout": 0.0},
    "qlora": {"name": "qlora", "r": 4},
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    import transformers

    out = {}
    for family, (cls, extra) in FAMILIES.items():
        folder = tmp_path_factory.mktemp(family)
        getattr(transformers, cls)(**{**SMALL, **extra}).save_pretrained(folder)
        out[family] = folder
    return out


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_spec_from_config_matches_the_meta_model(folders, family, method):
    cfg = validate_config(
        {"model": {"name": str(folders[family])}, "data": {"path": "x.jsonl"}, "method": METHODS[method]}
    )
    source = model_source(cfg)
    shape = est.model_shape(source.config)
    light = spec_from_config(source.config, cfg, shape, cfg.method)
    assert light is not None
    meta = spec_from_model(est.meta_model(cfg, source), shape.layers, qlora=method == "qlora")
    assert (light.total, light.trainable, light.quantised) == (meta.total, meta.trainable, meta.quantised)
    assert (light.embeddings_train, light.head_numel, light.head_rows, light.head_trains) == (
        meta.embeddings_train,
        meta.head_numel,
        meta.head_rows,
        meta.head_trains,
    )
    assert [x.key() for x in light.layers] == [x.key() for x in meta.layers]


def test_other_methods_and_targets_fall_back_to_the_meta_model(folders):
    def light(method: dict) -> object:
        cfg = validate_config(
            {"model": {"name": str(folders["llama"])}, "data": {"path": "x.jsonl"}, "method": method}
        )
        source = model_source(cfg)
        return spec_from_config(source.config, cfg, est.model_shape(source.config), cfg.method)

    assert light({"name": "ia3"}) is None
    assert light({"name": "lora", "use_dora": True}) is None
    assert light({"name": "lora", "target_modules": ["lm_head"]}) is None
    # and the estimate still answers, through the meta model
    cfg = validate_config(
        {"model": {"name": str(folders["llama"])}, "data": {"path": "x.jsonl"}, "method": {"name": "ia3"}}
    )
    assert (
        0
        < est.estimate_memory(cfg, device="cpu").trainable
        < est.estimate_memory(cfg, device="cpu").parameters
    )
