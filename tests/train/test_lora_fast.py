"""lora_fast: FastDropout drops with the configured probability and scales like nn.Dropout; PEFT's
input cast switched off under autocast changes no output; the fused LoRA update gives PEFT's
outputs and gradients (same masks), merges as PEFT does and is removed after training."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tests.conftest import tiny_llama

from lmtune.train import lora_fast
from lmtune.train.lora_fast import (
    FastDropout,
    FusedLora,
    keep_mask,
    restore_lora,
    speed_up_lora,
)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keep_mask_drops_with_probability_p_in_every_lane(p):
    torch.manual_seed(0)
    drop = FastDropout(p)
    n = 3_000_000
    mask = keep_mask(torch.Size([n]), drop.cut, torch.device("cpu"))
    assert drop.rounded_p == pytest.approx(p, abs=1 / 65536)
    sigma = (p * (1 - p) / (n // 3)) ** 0.5
    for lane in range(3):  # each 16-bit lane of the 64-bit words on its own
        dropped = 1 - mask[lane::3].float().mean().item()
        assert abs(dropped - drop.rounded_p) < 5 * sigma, (lane, dropped)
    # neighbouring elements are independent: both dropped about p^2 of the time
    both = (~mask[:-1] & ~mask[1:]).float().mean().item()
    assert abs(both - p * p) < 5 * (p * p / n) ** 0.5 + 1e-4


def test_masks_follow_the_seed_and_differ_between_calls():
    torch.manual_seed(3)
    a, b = (
        keep_mask(torch.Size([4, 100]), 3277, torch.device("cpu")),
        keep_mask(torch.Size([4, 100]), 3277, "cpu"),
    )
    torch.manual_seed(3)
    assert torch.equal(keep_mask(torch.Size([4, 100]), 3277, torch.device("cpu")), a)
    assert not torch.equal(a, b)


def test_fast_dropout_scales_kept_values_and_their_gradient():
    torch.manual_seed(0)
    drop = FastDropout(0.2)
    x = (torch.rand(64, 257) + 0.5).requires_grad_()  # no zeros, so kept positions are out != 0
    out = drop(x)
    kept = out != 0
    assert 0.15 < 1 - kept.float().mean().item() < 0.25
    torch.testing.assert_close(out[kept], x[kept] / (1 - drop.rounded_p))
    g = torch.randn_like(x)
    out.backward(g)
    torch.testing.assert_close(x.grad, torch.where(kept, g / (1 - drop.rounded_p), 0))
    # the expectation is the input: the mean over many draws approaches x
    mean = torch.stack([drop(x.detach()) for _ in range(400)]).mean(0)
    assert (mean - x.detach()).abs().mean() < 0.02
    drop.eval()
    assert drop(x) is x
    assert FastDropout(0.0)(x) is x
    with pytest.raises(ValueError):
        FastDropout(1.0)
    assert FastDropout(1 - 1e-9).scale == 65536  # p rounded up to 1 keeps one lane value of 65536


def lora_model(dropout: float, **kw):
    model = tiny_llama(300)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "v_proj"], **kw)
    model = get_peft_model(model, config)
    for n, p in model.named_parameters():  # the B matrices start at zero: give the adapter an effect
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    return model


def test_speed_up_lora_swaps_dropouts_and_casts_without_changing_outputs():
    model = lora_model(0.1)
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits
    counts = speed_up_lora(model, autocast=True, fast_dropout=True)
    assert counts == {"dropout": 4, "input_cast": 4, "fused": 0}  # q and v in 2 layers
    drops = [m for n, m in model.named_modules() if n.endswith("lora_dropout.default")]
    assert len(drops) == 4 and all(isinstance(d, FastDropout) and not d.training for d in drops)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)  # the cast autocast undid changed nothing
    model.train()
    assert all(d.training for d in drops)
    restore_lora(model)
    assert all(m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))


def test_speed_up_lora_leaves_dora_casts_and_optional_dropout_alone():
    model = lora_model(0.1, use_dora=True)
    assert speed_up_lora(model, autocast=True, fast_dropout=True) == {
        "dropout": 0,
        "input_cast": 0,
        "fused": 0,
    }
    model = lora_model(0.1)
    assert speed_up_lora(model, autocast=False, fast_dropout=False) == {
        "dropout": 0,
        "input_cast": 0,
        "fused": 0,
    }
    assert not any(isinstance(m, FastDropout) for m in model.modules())


def run_step(model, ids, seed):
    """Loss and every trainable parameter's and the embeddings' gradient after one training step."""
    model.zero_grad()
    torch.manual_seed(seed)  # the same dropout masks on both sides
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    loss = model(inputs_embeds=embeds, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, embeds.grad


def twin_models(dropout: float, fast_dropout: bool):
    """The same LoRA model twice, one with the fused variant installed."""
    plain, fused = lora_model(dropout), lora_model(dropout)
    fused.load_state_dict(plain.state_dict())
    for m in (plain, fused):
        m.train()
    assert speed_up_lora(plain, autocast=False, fast_dropout=fast_dropout)["fused"] == 0
    assert speed_up_lora(fused, autocast=False, fast_dropout=fast_dropout, fused=True)["fused"] == 4
    return plain, fused


def count_fused_calls(monkeypatch) -> list[int]:
    calls = [0]
    apply = lora_fast._LoraUpdate.apply

    def counted(*args):
        calls[0] += 1
        return apply(*args)

    monkeypatch.setattr(lora_fast._LoraUpdate, "apply", counted)
    return calls


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_lora_gives_peft_loss_and_gradients_in_float32(dropout, monkeypatch):
    plain, fused = twin_models(dropout, fast_dropout=True)
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    calls = count_fused_calls(monkeypatch)
    loss_p, grads_p, emb_p = run_step(plain, ids, seed=3)
    assert calls == [0]
    loss_f, grads_f, emb_f = run_step(fused, ids, seed=3)
    assert calls == [4]  # q and v in 2 layers
    torch.testing.assert_close(loss_f, loss_p, rtol=1e-6, atol=1e-6)
    assert grads_p.keys() == grads_f.keys() and any("lora_A" in n for n in grads_p)
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(emb_f, emb_p, rtol=1e-4, atol=1e-6)
    if dropout:  # masks really drawn: another seed changes the gradient
        _, other, _ = run_step(fused, ids, seed=4)
        assert not torch.allclose(
            other["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"],
            grads_f["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"],
        )


def test_fused_lora_under_bf16_autocast_stays_close_to_peft(monkeypatch):
    plain, fused = twin_models(0.1, fast_dropout=True)
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    calls = count_fused_calls(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_p, grads_p, _ = run_step(plain, ids, seed=3)
        loss_f, grads_f, _ = run_step(fused, ids, seed=3)
    assert calls == [4]
    torch.testing.assert_close(loss_f, loss_p, rtol=2e-2, atol=2e-2)
    for name in grads_p:
        assert grads_f[name].dtype == torch.float32, name
        cos = torch.nn.functional.cosine_similarity(grads_f[name].flatten(), grads_p[name].flatten(), dim=0)
        assert cos > 0.99, name


def test_fused_lora_falls_back_where_it_cannot_fuse_and_merges_like_peft(monkeypatch):
    plain, fused = twin_models(0.1, fast_dropout=False)  # torch's nn.Dropout: PEFT's own expression
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    calls = count_fused_calls(monkeypatch)
    loss_p, grads_p, _ = run_step(plain, ids, seed=3)
    loss_f, grads_f, _ = run_step(fused, ids, seed=3)
    assert calls == [0]
    assert torch.equal(loss_f, loss_p) and all(torch.equal(grads_f[n], grads_p[n]) for n in grads_p)
    plain.eval(), fused.eval()
    merged_p = plain.merge_and_unload()
    merged_f = fused.merge_and_unload()  # merging goes through the variant's merge
    for (n, a), (_, b) in zip(merged_p.state_dict().items(), merged_f.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6, msg=n)


def test_restore_lora_removes_the_fused_variant():
    _, fused = twin_models(0.0, fast_dropout=True)
    variants = [m.lora_variant for m in fused.modules() if hasattr(m, "lora_variant")]
    assert sum(isinstance(v, FusedLora) for vs in variants for v in vs.values()) == 4
    restore_lora(fused)
    assert not any(vs for vs in variants)
