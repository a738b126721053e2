"""lmtune_packed: attention per packed sample equals SDPA's block-diagonal attention, and every call
that is not a packed training forward goes to SDPA unchanged."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import tiny_llama

import lmtune.train.packed_attention as pa

LENGTHS = [[10, 7, 5, 3], [12, 13], [25], [9, 8, 8]]  # buckets of equal and of padded lengths


def packed_positions(lengths: list[list[int]]) -> torch.Tensor:
    return torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])


def test_segments_and_buckets():
    pos = packed_positions([[3, 2], [5]])
    assert pa.segments(pos) == [(0, 3), (3, 2), (5, 5)]
    assert pa.plan_segments(pos, ratio=1.3).buckets == [(1, 5), (1, 3), (1, 2)]  # 2 * 1.3 < 3
    plan = pa.plan_segments(pos, ratio=1.5)
    # 5 alone (3 * 1.5 < 5), then 3 with 2 padded to 3 (2 * 1.5 >= 3)
    assert plan.buckets == [(1, 5), (2, 3)]
    assert plan.gather.tolist() == [5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 4]
    assert plan.real.tolist() == [True] * 10 + [False]
    # scatter takes every token's output from its slot: gather[scatter] is the identity
    assert plan.gather[plan.scatter].tolist() == list(range(10))


def run(model, ids, pos, attn):
    model.set_attn_implementation(attn)
    model.zero_grad()
    out = model(input_ids=ids, position_ids=pos, labels=ids, use_cache=False)
    out.loss.backward()
    return out.logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def packed_case(monkeypatch, seed: int):
    """A tiny Llama, packed ids and positions, and the bucket lists of every bucketed call."""
    pa.register()
    model = tiny_llama(100)
    pos = packed_positions(LENGTHS)
    ids = torch.randint(0, 100, pos.shape, generator=torch.Generator().manual_seed(seed))
    ran: list = []
    real = pa.bucketed_attention
    monkeypatch.setattr(pa, "bucketed_attention", lambda *a: ran.append(a[3].buckets) or real(*a))
    return model, ids, pos, ran


def test_equals_sdpa_block_diagonal_attention_with_gradients(monkeypatch):
    """fp32: logits and every gradient as with SDPA's block-diagonal mask; the bucketed path ran."""
    model, ids, pos, ran = packed_case(monkeypatch, 0)
    ref_logits, ref_grads = run(model, ids, pos, "sdpa")
    logits, grads = run(model, ids, pos, "lmtune_packed")
    assert len(ran) == 2 and any(n > 1 for n, _ in ran[0])  # both layers, samples batched per bucket
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for k, g in grads.items():
        torch.testing.assert_close(g, ref_grads[k], rtol=1e-4, atol=1e-6, msg=k)


def test_inference_mode_forward_equals_sdpa(monkeypatch):
    """Evaluation runs under torch.inference_mode, whose tensors have no version counter."""
    model, ids, pos, ran = packed_case(monkeypatch, 3)
    outs = []
    for attn in ("sdpa", "lmtune_packed"):
        model.set_attn_implementation(attn)
        with torch.inference_mode():
            outs.append(model(input_ids=ids, position_ids=pos, use_cache=False).logits)
    assert ran
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)


def test_bf16_stays_close_to_sdpa():
    pa.register()
    model = tiny_llama(100)
    pos = packed_positions(LENGTHS)
    ids = torch.randint(0, 100, pos.shape, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, _ = run(model, ids, pos, "sdpa")
        ours, _ = run(model, ids, pos, "lmtune_packed")
    assert (ours.float() - ref.float()).abs().max() < 0.05


@pytest.mark.parametrize("case", ["padding mask", "one sample per row", "generation with a cache"])
def test_other_calls_go_to_sdpa_unchanged(case, monkeypatch):
    pa.register()
    model = tiny_llama(100)
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(pa, "bucketed_attention", lambda *a: pytest.fail("bucketed path taken"))
    outs = []
    for attn in ("sdpa", "lmtune_packed"):
        model.set_attn_implementation(attn)
        with torch.no_grad():
            if case == "padding mask":
                mask = torch.ones_like(ids)
                mask[0, :4] = 0
                # restarting position ids next to a padding mask: transformers does not isolate samples
                outs.append(
                    model(
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=packed_positions([[6, 6]] * 2),
                        use_cache=False,
                    ).logits
                )
            elif case == "one sample per row":
                outs.append(
                    model(input_ids=ids, position_ids=torch.arange(12).repeat(2, 1), use_cache=False).logits
                )
            else:
                outs.append(model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0))
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)


def test_padded_bucket_slots_get_no_gradient(monkeypatch):
    """GatherRows drops the gradient of padding slots; it must be zero anyway (causal masking):
    the same attention with torch's own indexing (gradients summed over duplicates) agrees."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, h, 8, 4, requires_grad=True) for h in (2, 1, 1))
    pos = packed_positions([[5, 3]])  # 3 is padded to 5 when bucketed with 5 at ratio 2
    plan = pa.plan_segments(pos, ratio=2.0)
    assert plan.buckets == [(2, 5)]
    out = pa.bucketed_attention(q, k, v, plan, 0.5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    monkeypatch.setattr(pa.GatherRows, "apply", lambda x, index, live: x[index])
    ref = pa.bucketed_attention(q, k, v, plan, 0.5)
    torch.testing.assert_close(out, ref)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_the_plan_is_reused_only_for_the_same_position_ids_and_mask():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, 2
    q, k, v = torch.randn(1, 2, 8, 4), torch.randn(1, 1, 8, 4), torch.randn(1, 1, 8, 4)
    pos = packed_positions([[5, 3]])
    causal = torch.ones(8, 8, dtype=torch.bool).tril()[None, None]
    sample = pa.sample_starts(pos).long().cumsum(-1)
    block = causal & (sample[:, None, :, None] == sample[:, None, None, :])
    for mask in (block, causal, block):  # same position_ids object; the mask decides each time
        ours, _ = pa.packed_attention(module, q, k, v, mask, position_ids=pos)
        ref, _ = sdpa_attention_forward(module, q, k, v, mask, position_ids=pos)
        torch.testing.assert_close(ours, ref)
    assert pa._plans.plan is not None  # the last call (block mask) went the bucketed way
