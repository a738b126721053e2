"""The GPU plan: each strategy's split of memory, the FLOPs formulas, time and cost, prices and GPU
data, against counts made here by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml
from tests.conftest import TINY

from lmtune.config.loader import validate_config
from lmtune.errors import ConfigError
from lmtune.plan import hardware, scale
from lmtune.plan.estimate import MemoryEstimate, model_shape, model_spec
from lmtune.plan.source import model_source

GiB = 2**30


def estimate(**kw) -> MemoryEstimate:
    base = dict(parameters=0, trainable=0, weights=16 * GiB, gradients=32 * GiB, optimizer=64 * GiB,
                activations=3 * GiB, loss=GiB, overhead=GiB // 2, gradient_checkpointing=False)  # fmt: skip
    return MemoryEstimate(**{**base, **kw})


def row(key: str):
    return next(s for s in scale.STRATEGIES if s.key == key)


@pytest.mark.parametrize(
    ("key", "weights", "grads", "optim", "host"),
    [
        ("ddp", 16, 64, 64, 0),  # DDP's buckets: a second copy of the gradients
        ("zero1", 16, 32, 8, 0),
        ("zero2", 16, 4, 8, 0),
        ("zero2-offload", 16, 4, 0, 12),
        ("zero3", 2 + 1, 4, 8, 0),  # a shard of the weights + the gathered unit
        ("zero3-offload", 2 + 1, 4, 0, 12),
        ("zero3-offload-all", 1, 4, 0, 14),
        ("fsdp", 2 + 1, 4, 8, 0),
        ("fsdp-offload", 1, 0, 0, 14),
    ],
)
def test_each_strategy_divides_what_it_shards(key, weights, grads, optim, host):
    d = scale.per_device(estimate(), row(key), world=8, unit=GiB)
    assert (d.weights, d.gradients, d.optimizer, d.host) == (
        weights * GiB,
        grads * GiB,
        optim * GiB,
        host * GiB,
    )
    assert d.activations == 4 * GiB and d.total == d.weights + d.gradients + d.optimizer + 4 * GiB + GiB // 2


def test_one_process_ddp_is_the_single_process_estimate():
    e = estimate()
    d = scale.per_device(e, row("ddp"), world=1, unit=GiB)
    assert d.total == e.weights + e.training + e.overhead


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("tiny_scale")
    LlamaConfig(**TINY).save_pretrained(folder)
    return folder


def spec_of(folder, method: dict):
    cfg = validate_config({"model": {"name": str(folder)}, "data": {"path": "x.jsonl"}, "method": method})
    source = model_source(cfg)
    return model_spec(cfg, source), model_shape(source.config)


def test_flops_full_is_six_n_plus_attention(tiny):
    h, i, v, n = TINY["hidden_size"], TINY["intermediate_size"], TINY["vocab_size"], TINY["num_hidden_layers"]
    kv = h // TINY["num_attention_heads"] * TINY["num_key_value_heads"]
    matmul = n * (2 * h * h + 2 * h * kv + 3 * h * i) + v * h  # layers' Linears + head; not the embedding
    spec, shape = spec_of(tiny, {"name": "full"})
    f = scale.flops_per_token(spec, shape, seq=512, method="full", ckpt=False)
    assert f.per_token == 6 * matmul + 6 * n * 512 * h
    on = scale.flops_per_token(spec, shape, seq=512, method="full", ckpt=True)
    assert on.per_token == f.per_token + 2 * matmul + 2 * n * 512 * h


def test_flops_lora_counts_the_frozen_base_once_more_not_twice(tiny):
    h, n = TINY["hidden_size"], TINY["num_hidden_layers"]
    spec, shape = spec_of(tiny, {"name": "lora", "r": 4, "target_modules": ["q_proj"]})
    matmul = (
        sum(x.in_features * x.out_features for layer in spec.layers for x in layer.linears) + spec.head_numel
    )
    f = scale.flops_per_token(spec, shape, seq=256, method="lora", ckpt=False)
    assert spec.trainable == n * 4 * (h + h)
    assert f.per_token == 4 * matmul + 6 * n * 256 * h + 2 * spec.trainable
    full = scale.flops_per_token(*spec_of(tiny, {"name": "full"}), seq=256, method="full", ckpt=False)
    assert f.per_token < full.per_token


def test_plan_takes_the_first_strategy_that_fits_and_prices_it():
    gpu = hardware.Gpu("x", "X", memory_mib=40 * 1024, bf16_tflops=100, mfu=0.5)
    rows = [scale.per_device(estimate(), row(k), world=4, unit=GiB) for k in ("ddp", "zero2", "zero3")]
    flops = (scale.Flops(1e9, ""), scale.Flops(1.5e9, ""))
    p = scale.plan_gpu(gpu, 4, rows, rows, flops=flops, step_tokens=4096, total_tokens=10**9, price=2.0)
    assert [r.strategy.key for r in p.rows] == ["ddp", "zero2", "zero3"]
    assert p.fits == [False, False, True] and p.chosen.strategy.key == "zero3"  # zero2: 16+8+16+4.5 > 40
    assert p.step_seconds == pytest.approx(4096 * 1e9 / 50e12)
    assert p.hours == pytest.approx(1e9 * 1e9 / (4 * 50e12) / 3600)
    assert p.cost == pytest.approx(p.hours * 4 * 2.0)
    assert p.cost_per_million == pytest.approx(p.cost / 1000)


def test_prices_override_and_mistakes(tmp_path):
    shipped = hardware.load_prices()
    assert shipped.date and set(hardware.gpus()) <= set(shipped.per_gpu_hour)
    mine = tmp_path / "p.yaml"
    mine.write_text(yaml.safe_dump({"date": "2030-01-01", "per_gpu_hour": {"h100": 1.5}}))
    p = hardware.load_prices(mine)
    assert p.per_gpu_hour["h100"] == 1.5 and p.per_gpu_hour["l4"] == shipped.per_gpu_hour["l4"]
    assert p.date == "2030-01-01" and p.file == str(mine)
    mine.write_text("per_gpu_hour: [1, 2]")
    with pytest.raises(ConfigError, match="per_gpu_hour"):
        hardware.load_prices(mine)
    with pytest.raises(ConfigError, match="Known: l4"):
        hardware.pick_gpus(["l4,v100"])
    assert [g.key for g in hardware.pick_gpus(["h100", "l4"])] == ["l4", "h100"]


def test_strategy_selection_and_the_configs_distributed_section():
    assert [s.key for s in scale.select_strategies("deepspeed", 3, "none")] == ["zero3"]
    assert [s.key for s in scale.select_strategies("fsdp", None, None)] == ["fsdp", "fsdp-offload"]
    assert len(scale.select_strategies(None, None, None)) == len(scale.STRATEGIES)
    dist = SimpleNamespace(strategy="deepspeed", zero_stage=2, offload_optimizer=True, offload_params=False)
    assert scale.configured_strategy(SimpleNamespace(distributed=dist)).key == "zero2-offload"
    assert scale.configured_strategy(SimpleNamespace()) is None  # a config without the section
