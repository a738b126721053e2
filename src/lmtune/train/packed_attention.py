"""Attention for packed rows that computes only the blocks of the block-diagonal mask (CPU training).

With packing, SDPA gets a block-diagonal causal mask and still computes every row x row score:
for a 512-token row holding samples of 200, 150, 100 and 62 tokens, 3.4x the work the samples need,
and on CPU its flash backward pass runs far below the matmul peak. Here the samples of all rows are
cut out, grouped by length into buckets, right-padded to their bucket's longest, and each bucket
runs as one batched matmul attention with a causal mask:

    packed rows (B, T)              buckets (samples padded to the bucket's longest, L)
    row 0: [ a a a a | b b b | c ]   L=4: [ a a a a ]  [ d d d d ]
    row 1: [ d d d d | e e | f f ]   L=3: [ b b b . ]           (. = padding)
                                     L=2: [ e e ]  [ f f ]  [ c . ]
    scores = q k^T per bucket (causal), softmax, @ v; outputs gathered back to (B, T)

Causality keeps padding out of every real query's keys, so padded positions never change a result
and get an exact zero gradient (softmax's gradient is zero where the probability is zero). The
query heads that share a key/value head (GQA) are stacked into one matmul instead of repeating k, v.

Registered with transformers' public `AttentionInterface` / `AttentionMaskInterface` under
`lmtune_packed`: masks are built as for SDPA, and any call that is not a packed training forward
(a padding mask, a key/value cache, sliding windows, attention dropout) goes to SDPA unchanged.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

NAME = "lmtune_packed"
BUCKET_RATIO = 1.3  # a bucket holds samples at most 1.3x shorter than its longest (padding <= ~23%)


@dataclass
class SegmentPlan:
    """Where each packed sample sits and how the samples are bucketed (one plan per forward)."""

    buckets: list[tuple[int, int]]  # (samples, padded length) per bucket, in gather order
    gather: torch.Tensor  # (sum samples*length,) flat token index of every padded slot
    real: torch.Tensor  # (sum samples*length,) bool: the slot holds a real token
    scatter: torch.Tensor  # (B*T,) padded-slot index of every token, for gathering outputs back
    biases: dict[tuple, torch.Tensor] = field(default_factory=dict)

    def causal_bias(self, length: int, groups: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """(groups*length, length) additive causal mask, repeated for the query heads stacked per k/v
        head; made once per forward and bucket length (every layer reuses it), freed with the plan."""
        key = (length, groups, dtype, device)
        if key not in self.biases:
            allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()
            bias = torch.zeros(length, length, dtype=dtype, device=device).masked_fill(
                ~allowed, float("-inf")
            )
            self.biases[key] = bias.repeat(groups, 1)
        return self.biases[key]


def sample_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: a new sample starts wherever a position is not the previous one + 1, as
    transformers' `find_packed_sequence_indices` decides for the mask."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts


def segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(flat start, length) of every sample in the rows."""
    flat = sample_starts(position_ids).flatten().nonzero().flatten().tolist() + [position_ids.numel()]
    return [(s, e - s) for s, e in zip(flat, flat[1:])]


def plan_segments(position_ids: torch.Tensor, ratio: float = BUCKET_RATIO) -> SegmentPlan:
    segs = sorted(segments(position_ids), key=lambda s: (-s[1], s[0]))
    groups: list[list[tuple[int, int]]] = []
    for s in segs:
        if not groups or groups[-1][0][1] > s[1] * ratio:
            groups.append([])
        groups[-1].append(s)
    gathers, reals, buckets = [], [], []
    for group in groups:
        length = group[0][1]
        steps = torch.arange(length)
        start = torch.tensor([s for s, _ in group])[:, None]
        size = torch.tensor([n for _, n in group])[:, None]
        gathers.append((start + torch.minimum(steps, size - 1)).flatten())  # pad by repeating the last
        reals.append((steps < size).flatten())
        buckets.append((len(group), length))
    gather, real = torch.cat(gathers), torch.cat(reals)
    scatter = torch.empty(position_ids.numel(), dtype=torch.long)
    scatter[gather[real]] = real.nonzero().flatten()
    device = position_ids.device
    return SegmentPlan(buckets, gather.to(device), real.to(device), scatter.to(device))


class GatherRows(torch.autograd.Function):
    """x[index] along dim 0 whose backward writes only the rows in `live` (no accumulation).

    Every source row is read by at most one live slot; slots not live get a zero gradient by
    construction (padding), so their gradient is dropped instead of summed with a slow
    accumulate-scatter.
    """

    @staticmethod
    def forward(ctx, x, index, live):  # noqa: D102
        ctx.save_for_backward(index, live)
        ctx.rows = x.shape[0]
        return x[index]

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        index, live = ctx.saved_tensors
        out = grad.new_zeros((ctx.rows, *grad.shape[1:]))
        if live is None:
            out[index] = grad
        else:
            out[index[live]] = grad[live]
        return out, None, None


def bucketed_attention(q, k, v, plan: SegmentPlan, scaling: float) -> torch.Tensor:
    """q (B, Hq, T, D), k/v (B, Hkv, T, D) -> output (B, T, Hq, D), samples isolated."""
    b, hq, t, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    qs, ks, vs = (
        GatherRows.apply(x.transpose(1, 2).reshape(b * t, x.shape[1], d), plan.gather, plan.real)
        for x in (q, k, v)
    )
    outs, at = [], 0
    for n, length in plan.buckets:
        size = n * length
        qb = (
            qs[at : at + size]
            .view(n, length, hkv, g, d)
            .permute(0, 2, 3, 1, 4)
            .reshape(n * hkv, g * length, d)
        )
        kb = ks[at : at + size].view(n, length, hkv, d).transpose(1, 2).reshape(n * hkv, length, d)
        vb = vs[at : at + size].view(n, length, hkv, d).transpose(1, 2).reshape(n * hkv, length, d)
        at += size
        scores = torch.baddbmm(
            plan.causal_bias(length, g, qb.dtype, qb.device), qb, kb.transpose(1, 2), alpha=scaling
        )
        o = torch.bmm(torch.softmax(scores, dim=-1), vb)  # (n*hkv, g*length, d)
        outs.append(o.view(n, hkv, g, length, d).permute(0, 3, 1, 2, 4).reshape(size, hq, d))
    out = GatherRows.apply(torch.cat(outs), plan.scatter, None)
    return out.view(b, t, hq, d)


class _PlanCache:
    """The plan of the forward in progress: every layer gets the same position_ids and mask objects
    (held by weak references, so a freed tensor's address reused by the next batch never matches)."""

    def __init__(self) -> None:
        self.refs: tuple = ()
        self.versions: tuple = ()
        self.plan: SegmentPlan | None = None

    def get(self, position_ids: torch.Tensor, mask: torch.Tensor) -> SegmentPlan | None:
        versions = (version(position_ids), version(mask))
        same = self.refs and self.refs[0]() is position_ids and self.refs[1]() is mask
        if same and self.versions == versions:
            return self.plan
        self.plan = plan_segments(position_ids) if block_diagonal(mask, position_ids) else None
        self.refs, self.versions = (weakref.ref(position_ids), weakref.ref(mask)), versions
        return self.plan


def version(t: torch.Tensor) -> int:
    """The in-place version counter; inference-mode tensors have none (and are not modified)."""
    return -1 if t.is_inference() else t._version


def block_diagonal(mask: torch.Tensor, position_ids: torch.Tensor) -> bool:
    """True when `mask` (B, 1, T, T) bool is exactly the causal mask of the packed samples."""
    sample = sample_starts(position_ids).long().cumsum(-1)
    t = position_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=mask.device).tril()
    expected = (sample[:, :, None] == sample[:, None, :]) & causal
    return bool(sample[:, -1].gt(1).any()) and torch.equal(mask[:, 0], expected)


_plans = _PlanCache()


def packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention function: bucketed per-sample attention for packed rows, else SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    usable = (
        position_ids is not None
        and position_ids.dim() == 2
        and position_ids.shape == (query.shape[0], query.shape[2])
        and query.shape[2] == key.shape[2]
        and isinstance(attention_mask, torch.Tensor)
        and attention_mask.dtype == torch.bool
        and attention_mask.dim() == 4
        and attention_mask.shape[1] == 1
        and not dropout
        and getattr(module, "is_causal", True)
        and all(kwargs.get(k) is None for k in ("sliding_window", "softcap", "s_aux", "position_bias"))
    )
    plan = _plans.get(position_ids, attention_mask) if usable else None
    if plan is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return bucketed_attention(query, key, value, plan, scale), None


def register() -> str:
    """Make `attn_implementation="lmtune_packed"` known to transformers; returns the name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, packed_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
