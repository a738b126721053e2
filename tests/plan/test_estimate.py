"""The memory estimate: its arithmetic against hand counts, its activation count against what
autograd really keeps, the checkpointing decision, and (the acceptance check) its predicted peak
against the peak RSS of real `lmtune train` runs on the tiny model and on SmolLM2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.conftest import TINY

from lmtune.config.loader import validate_config
from lmtune.plan import estimate as est

MiB = 2**20


@pytest.fixture(scope="module")
def tiny_config_dir(tmp_path_factory) -> Path:
    """Only config.json: the estimate never reads weights."""
    from transformers import LlamaConfig

    out = tmp_path_factory.mktemp("tiny_config")
    LlamaConfig(**TINY).save_pretrained(out)
    return out


def make_cfg(model: Path | str, **sections):
    raw = {"model": {"name": str(model)}, "data": {"path": "train.jsonl"}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_config(raw)


LORA = {"name": "lora", "r": 4, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def tiny_counts(r: int = 4) -> tuple[int, int]:
    """(all parameters, LoRA parameters) of the TINY Llama, counted from its dimensions."""
    h, i, v, n = TINY["hidden_size"], TINY["intermediate_size"], TINY["vocab_size"], TINY["num_hidden_layers"]
    kv = h // TINY["num_attention_heads"] * TINY["num_key_value_heads"]
    layer = h * h + 2 * h * kv + h * h + 3 * h * i + 2 * h  # q, k, v, o, gate/up/down, two norms
    base = 2 * v * h + n * layer + h  # untied embedding and head, layers, final norm
    lora = n * r * ((h + h) + 2 * (h + kv) + (h + h))  # A (r x in) + B (out x r) on q, k, v, o
    return base + lora, lora


# -- arithmetic ---------------------------------------------------------------------------------------
def test_parameters_weights_gradients_optimizer_by_hand(tiny_config_dir):
    total, lora = tiny_counts()
    cfg = make_cfg(tiny_config_dir, method=LORA, train={"bf16": True})
    e = est.estimate_memory(cfg, device="cpu")
    assert (e.parameters, e.trainable) == (total, lora)
    assert e.weights == 4 * lora + 2 * (total - lora)  # LoRA float32, frozen base bf16
    assert e.gradients == 4 * lora
    assert e.optimizer == 8 * lora

    no_bf16 = est.estimate_memory(make_cfg(tiny_config_dir, method=LORA, train={"bf16": False}), device="cpu")
    assert no_bf16.weights == 4 * total
    kept_fp32 = est.estimate_memory(
        make_cfg(tiny_config_dir, method=LORA, train={"bf16": True, "bf16_frozen": False}), device="cpu"
    )
    assert kept_fp32.weights == 4 * total
    eight_bit = est.estimate_memory(
        make_cfg(tiny_config_dir, method=LORA, train={"bf16": True, "optim": "adamw_8bit"}), device="cpu"
    )
    assert eight_bit.optimizer == 2 * lora


def test_full_fine_tuning_keeps_every_weight_in_float32(tiny_config_dir):
    base, _ = tiny_counts(r=0)
    e = est.estimate_memory(
        make_cfg(tiny_config_dir, method={"name": "full"}, train={"bf16": True}), device="cpu"
    )
    assert e.parameters == e.trainable == base
    assert (e.weights, e.gradients, e.optimizer) == (4 * base, 4 * base, 8 * base)


def test_qlora_prices_the_quantised_linear_weights(tiny_config_dir):
    h, i, v, n = TINY["hidden_size"], TINY["intermediate_size"], TINY["vocab_size"], TINY["num_hidden_layers"]
    kv = h // TINY["num_attention_heads"] * TINY["num_key_value_heads"]
    total, lora = tiny_counts()
    linear = n * (2 * h * h + 2 * h * kv + 3 * h * i)  # every Linear of the layers; the head stays
    cfg = make_cfg(tiny_config_dir, method={**LORA, "name": "qlora"}, train={"bf16": True})
    e = est.estimate_memory(cfg, device="cpu")
    assert e.trainable == lora
    per_weight = 0.5 + 1 / 64  # 4 bits + an 8-bit absmax per 64 weights (double quantisation)
    assert e.weights == 4 * lora + 2 * (total - lora - linear) + int(linear * per_weight)
    assert 2 * v * h < total - lora - linear  # the untied embedding and head are not quantised


def test_tokens_and_loss_follow_the_config(tiny_config_dir):
    v, h = TINY["vocab_size"], TINY["hidden_size"]
    cfg = make_cfg(
        tiny_config_dir, method=LORA, data={"max_length": 64}, train={"batch_size": 2, "bf16": True}
    )
    e = est.estimate_memory(cfg, device="cpu")
    assert e.tokens_per_step == 2 * 64
    # 128 trained positions at most, under one 256-row chunk: the bf16 matmul output and the float32
    # softmax buffer, plus the gathered bf16 hidden states and their gradient
    assert e.loss == 128 * v * (2 + 4) + 2 * 128 * h * 2
    full = est.estimate_memory(
        make_cfg(
            tiny_config_dir,
            method=LORA,
            data={"max_length": 64},
            train={"batch_size": 2, "bf16": True, "loss_chunk": 0},
        ),
        device="cpu",
    )
    assert full.loss == 128 * v * (2 + 4 + 4)  # bf16 logits, float32 upcast, float32 log-softmax
    pref = make_cfg(
        tiny_config_dir,
        task="preference",
        method=LORA,
        data={"max_length": 64},
        train={"batch_size": 2, "bf16": True},
    )
    assert est.estimate_memory(pref, device="cpu").tokens_per_step == 2 * 2 * 64  # chosen + rejected


def test_checkpointing_keeps_less_and_a_longer_row_costs_more(tiny_config_dir):
    cfg = make_cfg(tiny_config_dir, method=LORA, train={"bf16": True})
    off = est.estimate_memory(cfg, gradient_checkpointing=False, device="cpu")
    on = est.estimate_memory(cfg, gradient_checkpointing=True, device="cpu")
    assert on.activations < off.activations and on.peak < off.peak
    assert on.weights == off.weights and on.loss == off.loss
    longer = make_cfg(tiny_config_dir, method=LORA, data={"max_length": 2048}, train={"bf16": True})
    assert (
        est.estimate_memory(longer, gradient_checkpointing=False, device="cpu").activations
        > 2 * off.activations
    )


@pytest.mark.parametrize("fused", [False, True], ids=["peft", "fused"])
@pytest.mark.parametrize("attention", ["sdpa", "lmtune_packed"])
def test_activations_match_what_autograd_keeps(attention, fused, tmp_path, one_torch_thread):
    """The op-by-op count against the bytes autograd really saves for a packed bf16 LoRA batch
    (deduplicated storages, parameters excluded), measured with saved-tensor hooks, with the LoRA
    layers as training runs them (lora_fast; PEFT's forward keeps a dropped input per adapter, the
    fused update one input per group of adapters that read it). Eight layers: the estimate counts
    the first trained layer in full, though the ops before its first trained parameter keep nothing
    (a quarter of a layer, which two layers would make look large). Samples of 100 and 156 tokens in
    rows of 256 (lmtune_packed is priced for samples half a row long)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from lmtune.methods.base import get_method
    from lmtune.train.lora_fast import speed_up_lora
    from lmtune.train.packed_attention import register

    LlamaConfig(**{**TINY, "num_hidden_layers": 8}).save_pretrained(tmp_path)
    cfg = make_cfg(
        tmp_path,
        method={**LORA, "r": 8},
        data={"max_length": 256},
        train={"batch_size": 2, "bf16": True, "fused_lora": fused},
    )
    cfg.model.attn_implementation = attention
    predicted = est.estimate_memory(cfg, gradient_checkpointing=False, device="cpu").activations_kept

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig.from_pretrained(tmp_path))
    register()
    model.set_attn_implementation(attention)
    model = get_method("lora").prepare(model, cfg.method)
    fused_layers = speed_up_lora(model, autocast=True, fast_dropout=True, fused=fused)["fused"]
    assert fused_layers == (32 if fused else 0)  # 4 adapted projections in each of 8 layers
    for p in model.parameters():  # the frozen base in bf16, as training keeps it
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    model.train()
    params = {p.data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, 1000, (2, 256))
    positions = torch.cat([torch.arange(100), torch.arange(156)]).repeat(2, 1)  # two packed samples a row
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        model.get_base_model().get_decoder()(input_ids=ids, position_ids=positions, use_cache=False)
    measured = sum(saved.values())
    print(f"predicted {predicted} B, autograd keeps {measured} B")
    assert abs(predicted - measured) <= 0.07 * measured, (predicted, measured)


def test_model_sources_without_loading_weights(tmp_path, tiny_config_dir):
    src = est.model_source(make_cfg(tiny_config_dir))
    assert src.kind == "folder" and src.config.hidden_size == TINY["hidden_size"]
    run = tmp_path / "run"  # a previous run stands for its base model, with its method options
    run.mkdir()
    (run / "lmtune_run.json").write_text(
        json.dumps({"base_model": str(tiny_config_dir), "method": "lora", "method_options": {**LORA, "r": 2}})
    )
    from_run = est.estimate_memory(make_cfg(run, method=LORA, train={"bf16": True}), device="cpu")
    assert from_run.trainable == tiny_counts(r=2)[1]


# -- the decision ---------------------------------------------------------------------------------
def test_decide_checkpointing(tiny_config_dir):
    cfg = make_cfg(tiny_config_dir, method=LORA, data={"max_length": 1024}, train={"bf16": True})
    without = est.estimate_memory(cfg, gradient_checkpointing=False, device="cpu").peak
    on, why = est.decide_checkpointing(cfg, "cpu", limit=without - 1)
    assert on and "exceeds" in why
    off, why = est.decide_checkpointing(cfg, "cpu", limit=without + 64 * MiB)
    assert not off and "fits" in why
    forced = make_cfg(tiny_config_dir, method=LORA, train={"gradient_checkpointing": True})
    assert est.decide_checkpointing(forced, "cpu", limit=1) == (True, "train.gradient_checkpointing: true")
    prefix = make_cfg(tiny_config_dir, method={"name": "prefix"})
    assert est.decide_checkpointing(prefix, "cpu", limit=1)[0] is False


# -- acceptance: predicted peak against the measured peak RSS of real runs ------------------------------
WRAPPER = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
if done.returncode:
    sys.exit(done.stdout[-3000:] + done.stderr[-3000:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)  # KiB on Linux
"""
ESTIMATE = """
import dataclasses, json, sys
from lmtune.config.loader import load_config
from lmtune.plan.estimate import decide_checkpointing, estimate_memory
cfg = load_config(sys.argv[1])
on, _ = decide_checkpointing(cfg, "cpu")
e = estimate_memory(cfg, gradient_checkpointing=on, device="cpu")
print(json.dumps({**dataclasses.asdict(e), "peak": e.peak}))
"""


def estimate_and_measure(config: dict, tmp_path: Path, env: dict[str, str]) -> tuple[dict, int]:
    """The estimate, as a fresh `lmtune` process sees it, and the peak RSS of `lmtune train`, each in
    its own fresh process (RUSAGE_CHILDREN of a wrapper counts no other test's children)."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run_env = {**os.environ, **env}
    got = subprocess.run(
        [sys.executable, "-c", ESTIMATE, str(path)], capture_output=True, text=True, env=run_env
    )
    assert got.returncode == 0, got.stderr[-3000:]
    estimate = json.loads(got.stdout.strip().splitlines()[-1])
    train = [sys.executable, "-m", "lmtune.cli.app", "train", str(path)]
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, *train], capture_output=True, text=True, env=run_env
    )
    assert done.returncode == 0, done.stderr[-6000:]
    return estimate, int(done.stdout.strip().splitlines()[-1])


def run_config(model: str, data: Path, out: Path) -> dict:
    return {
        "model": {"name": model},
        "data": {"path": str(data), "format": "alpaca", "limit": 16, "max_length": 512},
        "method": {"name": "lora", "r": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "train": {"max_steps": 3, "batch_size": 4, "log_steps": 1},
        "output": {"dir": str(out)},
    }


def assert_within(estimate: dict, measured: int, tolerance: float = 0.30) -> None:
    parts = {
        k: round(estimate[k] / MiB)
        for k in ("weights", "gradients", "optimizer", "activations", "loss", "overhead", "loading")
    }
    error = (estimate["peak"] - measured) / measured
    message = (
        f"estimated peak {estimate['peak'] / MiB:.0f} MiB vs measured peak RSS {measured / MiB:.0f} MiB "
        f"({100 * error:+.1f}%); parts in MiB: {parts}"
    )
    print(message)
    assert abs(error) <= tolerance, message


def test_estimate_matches_peak_rss_of_a_tiny_run(tiny_model_dir, shared_data, tmp_path):
    data = shared_data / "alpaca_en_stanford" / "alpaca_small.json"
    estimate, measured = estimate_and_measure(
        run_config(str(tiny_model_dir), data, tmp_path / "run"), tmp_path, {}
    )
    assert_within(estimate, measured)


@pytest.mark.slow  # CI time; the same check on the tiny model runs in CI, benchmarks/estimate_check.py measures more
@pytest.mark.realmodel
def test_estimate_matches_peak_rss_of_a_smollm2_run(shared_data, tmp_path, tmp_path_factory, monkeypatch):
    home = tmp_path_factory.getbasetemp() / "lmtune_home_shared"  # shared with the other SmolLM2 tests
    monkeypatch.setenv("LMTUNE_HOME", str(home))
    from lmtune.models.resolve import resolve_model_ref

    resolve_model_ref("smollm2-135m-instruct")  # import the GGUF once, outside the measured run
    data = shared_data / "alpaca_en_stanford" / "alpaca_small.json"
    config = run_config("smollm2-135m-instruct", data, tmp_path / "run")
    estimate, measured = estimate_and_measure(config, tmp_path, {"LMTUNE_HOME": str(home)})
    assert_within(estimate, measured)
