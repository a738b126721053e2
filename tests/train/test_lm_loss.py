"""The trained-position chunked loss equals the model's own loss, with the same gradients."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import tiny_llama

from lmtune.train.lm_loss import (
    LinearCrossEntropy,
    chunked_lm_loss_sum,
    decoder_and_head,
    supports_chunked_loss,
)


def tiny(tie: bool = False):
    return tiny_llama(257, tie=tie)


def batch():
    torch.manual_seed(1)
    ids = torch.randint(0, 257, (3, 20))
    labels = ids.clone()
    labels[0, :7] = -100
    labels[1, :15] = -100
    labels[2, 10:] = -100
    return ids, labels


def own_and_chunked(model, chunk: int):
    ids, labels = batch()
    model.zero_grad()
    own = model(input_ids=ids, labels=labels).loss
    own.backward()
    own_grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    decoder, head = decoder_and_head(model)
    hidden = decoder(input_ids=ids).last_hidden_state
    ours = chunked_lm_loss_sum(hidden, head, labels, chunk) / (labels[:, 1:] != -100).sum()
    ours.backward()
    ours_grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return own, own_grads, ours, ours_grads


@pytest.mark.parametrize("chunk", [1, 7, 4096])
@pytest.mark.parametrize("tie", [False, True])
def test_full_fine_tuning_loss_and_gradients_match_the_models_own(chunk, tie):
    own, own_grads, ours, ours_grads = own_and_chunked(tiny(tie), chunk)
    assert ours.item() == pytest.approx(own.item(), rel=1e-6)
    assert own_grads.keys() == ours_grads.keys()
    for k in own_grads:  # the head (tied or not) included: its gradient is computed chunk by chunk
        torch.testing.assert_close(ours_grads[k], own_grads[k], rtol=1e-4, atol=1e-7, msg=k)


def test_lora_gradients_match_and_the_frozen_head_gets_none():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    own, own_grads, ours, ours_grads = own_and_chunked(model, 5)
    assert ours.item() == pytest.approx(own.item(), rel=1e-6)
    assert own_grads.keys() == ours_grads.keys() and all("lora_" in k for k in ours_grads)
    for k in own_grads:
        torch.testing.assert_close(ours_grads[k], own_grads[k], rtol=1e-4, atol=1e-8, msg=k)


def test_a_head_bias_is_used_and_trained():
    torch.manual_seed(0)
    h = torch.randn(9, 6, requires_grad=True)
    w = torch.randn(11, 6, requires_grad=True)
    b = torch.randn(11, requires_grad=True)
    t = torch.randint(0, 11, (9,))
    ref = torch.nn.functional.cross_entropy(h @ w.T + b, t, reduction="sum")
    ref_grads = torch.autograd.grad(ref, (h, w, b))
    ours = LinearCrossEntropy.apply(h, w, b, t, 4)
    grads = torch.autograd.grad(ours, (h, w, b))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_no_trained_position_gives_a_zero_that_backpropagates():
    model = tiny()
    decoder, head = decoder_and_head(model)
    ids = torch.randint(0, 257, (1, 5))
    loss = chunked_lm_loss_sum(decoder(input_ids=ids).last_hidden_state, head, torch.full_like(ids, -100), 4)
    loss.backward()
    assert loss.item() == 0.0


def test_models_the_chunked_loss_cannot_stand_for_are_named():
    from peft import PromptTuningConfig, get_peft_model

    assert supports_chunked_loss(tiny()) is None
    prompt = get_peft_model(tiny(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    assert "virtual tokens" in supports_chunked_loss(prompt)
    capped = tiny()
    capped.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping" in supports_chunked_loss(capped)
