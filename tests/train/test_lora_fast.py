"""lora_fast: FastDropout drops with the configured probability and scales like nn.Dropout; PEFT's
input cast switched off under autocast changes no output."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tests.conftest import tiny_llama

from lmtune.train.lora_fast import FastDropout, keep_mask, restore_input_casts, speed_up_lora


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
    assert counts == {"dropout": 4, "input_cast": 4}  # q and v in 2 layers
    drops = [m for n, m in model.named_modules() if n.endswith("lora_dropout.default")]
    assert len(drops) == 4 and all(isinstance(d, FastDropout) and not d.training for d in drops)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)  # the cast autocast undid changed nothing
    model.train()
    assert all(d.training for d in drops)
    restore_input_casts(model)
    assert all(m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))


def test_speed_up_lora_leaves_dora_casts_and_optional_dropout_alone():
    model = lora_model(0.1, use_dora=True)
    assert speed_up_lora(model, autocast=True, fast_dropout=True) == {"dropout": 0, "input_cast": 0}
    model = lora_model(0.1)
    assert speed_up_lora(model, autocast=False, fast_dropout=False) == {"dropout": 0, "input_cast": 0}
    assert not any(isinstance(m, FastDropout) for m in model.modules())
