"""The speed plan: each auto switch resolves to on/off with a reason, from config and machine."""

from __future__ import annotations

import pytest
import torch

from lmtune.config.schema import RunConfig
from lmtune.train import plan as plan_mod
from lmtune.train.plan import cast_frozen, compile_pays_back, plan_speed


def cfg(**sections) -> RunConfig:
    base = {"data": {"path": "x.jsonl"}, "train": {"gradient_checkpointing": False}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return RunConfig.model_validate(base)


@pytest.mark.parametrize(
    ("method", "packing"),
    [("lora", True), ("full", True), ("prompt", False), ("prefix", False), ("ptuning", False)],
)
def test_packing_auto_is_off_only_for_virtual_token_methods(method, packing):
    p = plan_speed(cfg(method={"name": method}), device="cpu", bf16=False)
    assert p.packing is packing
    assert ("virtual tokens" in p.reasons["packing"]) is not packing


def test_packing_is_for_sft_and_follows_an_explicit_setting():
    assert not plan_speed(cfg(data={"packing": False}), device="cpu", bf16=False).packing
    assert not plan_speed(cfg(task="pretrain"), device="cpu", bf16=False).packing  # blocks are rows already


@pytest.mark.parametrize(
    ("method", "bf16", "setting", "expected"),
    [
        ("lora", True, True, True),
        ("lora", False, True, False),
        ("lora", True, False, False),
        ("full", True, True, False),
        ("freeze", True, True, False),
        ("bitfit", True, True, True),
    ],
)
def test_frozen_weights_go_bf16_only_when_the_saved_result_leaves_them_out(method, bf16, setting, expected):
    p = plan_speed(cfg(method={"name": method}, train={"bf16_frozen": setting}), device="cpu", bf16=bf16)
    assert p.bf16_frozen is expected


def test_cuda_picks_flash_attention_and_liger_only_when_installed(monkeypatch):
    monkeypatch.setattr(plan_mod, "installed", lambda name: name in {"flash_attn"})
    p = plan_speed(cfg(), device="cuda", bf16=True)
    assert p.attn_implementation == "flash_attention_2" and not p.liger
    assert "not installed" in p.reasons["liger kernels"]
    monkeypatch.setattr(plan_mod, "installed", lambda name: True)
    assert plan_speed(cfg(), device="cpu", bf16=True).attn_implementation != "flash_attention_2"
    assert not plan_speed(cfg(), device="cpu", bf16=True).liger


@pytest.mark.parametrize(
    ("method", "packing", "configured", "expected"),
    [
        ("lora", "auto", "auto", "lmtune_packed"),  # packed rows on CPU: attention per sample
        ("lora", False, "auto", "sdpa"),  # padded batches: SDPA
        ("prompt", "auto", "auto", "sdpa"),  # prompt learning is never packed
        ("lora", "auto", "sdpa", "sdpa"),  # a configured kernel is kept
        ("lora", False, "lmtune_packed", "lmtune_packed"),
    ],
)
def test_cpu_attention_follows_packing(method, packing, configured, expected):
    c = cfg(method={"name": method}, data={"packing": packing}, model={"attn_implementation": configured})
    assert plan_speed(c, device="cpu", bf16=True).attn_implementation == expected


def test_checkpointing_auto_asks_the_memory_estimate(monkeypatch):
    import lmtune.plan.estimate as estimate

    monkeypatch.setattr(estimate, "decide_checkpointing", lambda c, d, **k: (True, "would need 30 GB of 24"))
    p = plan_speed(cfg(train={"gradient_checkpointing": "auto"}), device="cpu", bf16=False)
    assert p.gradient_checkpointing and "30 GB" in p.reasons["gradient checkpointing"]


def test_compile_pays_back_only_on_long_runs_where_it_is_faster():
    # CUDA: 1 s steps 1.3x faster compiled save 0.23 s per step; 1.5 s per layer x 30 layers = 45 s.
    worth, saved, cost = compile_pays_back(1.0, 100, 30, "cuda")
    assert not worth and saved == pytest.approx(100 * (1 - 1 / 1.3)) and cost == 45
    assert compile_pays_back(1.0, 1000, 30, "cuda")[0]
    # CPU: measured slower compiled (bf16 on oneDNN), so never, however long the run.
    worth, saved, _ = compile_pays_back(10.0, 10**6, 30, "cpu")
    assert not worth and saved < 0


def test_cast_frozen_touches_only_frozen_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    model[0].requires_grad_(False)
    assert cast_frozen(model, torch.bfloat16, source=torch.float32) == 2
    assert model[0].weight.dtype == torch.bfloat16 and model[1].weight.dtype == torch.float32
    assert cast_frozen(model, torch.float32, source=torch.bfloat16) == 2
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_compile_auto_is_off_on_cpu_and_left_to_measurement_on_cuda():
    cpu = plan_speed(cfg(), device="cpu", bf16=True)
    assert cpu.compile is False and "slower" in cpu.reasons["torch.compile"]
    assert plan_speed(cfg(), device="cuda", bf16=True).compile == "auto"
    assert plan_speed(cfg(train={"compile": True}), device="cpu", bf16=True).compile is True
