"""Causal-LM loss computed only where a label is trained, in chunks of positions.

A model's own loss multiplies every position's hidden state by the output head: for SmolLM2 that is
a 49,152-wide float32 row per token, most of them on prompt tokens whose label is -100 and thrown
away. Here the decoder's hidden states are gathered at the trained positions first, and the head
plus cross-entropy run `chunk` positions at a time; the gradient of each chunk is computed in the
same pass (softmax - one_hot), so no chunk's logits are kept for the backward pass:

    hidden (B, L, H) ──gather where labels[:, 1:] != -100──► h (N, H)
        for each chunk c of h:   logits_c = h_c @ W^T (C, V)  ─► loss_c, dL/dh_c, dL/dW (if W trains)
    peak extra memory: one (C, V) block instead of (B, L, V)

The result is the *sum* of token losses; the caller divides by the number of trained tokens across
all gradient-accumulation micro-batches, so 4 accumulated batches of 2 equal one batch of 8.
"""

from __future__ import annotations

from typing import Any

import torch

from lmtune.tokenize.masking import IGNORE


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(h_i @ W^T + b, t_i), gradients computed chunk by chunk in the forward pass.

    Each chunk's logits go into two buffers allocated once and reused (the matmul's output in the
    compute dtype, float32 for the softmax): a fresh (chunk, vocabulary) tensor per chunk is tens of
    MB, which the C allocator maps from the OS anew each time, and the page faults of touching it
    cost more than the arithmetic (measured: half the loss's time on CPU).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int):  # noqa: D102
        need_h, need_w, need_b = ctx.needs_input_grad[:3]  # grad mode is off inside forward itself
        device = hidden.device
        dtype = compute_dtype(hidden, weight)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=device)
        with torch.autocast(device.type, enabled=False):
            w, h_all = weight.to(dtype), hidden.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            rows = min(chunk, h_all.shape[0])
            out = torch.empty((rows, w.shape[0]), dtype=dtype, device=device)
            probs = (
                out if dtype == torch.float32 else torch.empty(out.shape, dtype=torch.float32, device=device)
            )
            for start in range(0, h_all.shape[0], rows):
                h, t = h_all[start : start + rows], targets[start : start + rows]
                logits, p = out[: len(t)], probs[: len(t)]
                torch.mm(h, w.t(), out=logits)
                if b is not None:
                    logits.add_(b)
                if p is not logits:
                    p.copy_(logits)
                picked = p.gather(1, t[:, None]).squeeze(1)
                top = p.amax(1, keepdim=True)
                sums = p.sub_(top).exp_().sum(1, keepdim=True)
                total += (top.squeeze(1) + sums.log().squeeze(1) - picked).sum()
                if not (need_h or need_w or need_b):
                    continue
                p.div_(sums)  # softmax
                p[torch.arange(len(t), device=device), t] -= 1.0  # d loss / d logits
                if need_h:
                    g = p if p is logits else logits.copy_(p)
                    grad_h[start : start + rows] = g @ w
                if need_w:
                    grad_w.addmm_(p.t(), h.float())
                if need_b:
                    grad_b += p.sum(0)
        ctx.save_for_backward(*(x for x in (grad_h, grad_w, grad_b) if x is not None))
        ctx.needs = (need_h, need_w, need_b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        saved = iter(ctx.saved_tensors)
        need_h, need_w, need_b = ctx.needs
        gh = next(saved) * grad_out if need_h else None  # a 0-dim factor keeps grad_h's dtype
        gw = (next(saved) * grad_out).to(ctx.dtypes[0]) if need_w else None
        gb = (next(saved) * grad_out).to(ctx.dtypes[1]) if need_b else None
        return gh, gw, gb, None, None


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the head's matmul runs in: autocast's when it is on, else the wider of the two."""
    if torch.is_autocast_enabled(hidden.device.type):
        return torch.get_autocast_dtype(hidden.device.type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def trained_positions(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H) hidden states that predict a trained label, and those N labels (shifted by one)."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    return hidden[:, :-1][keep], targets[keep]


def chunked_lm_loss_sum(hidden: torch.Tensor, head: Any, labels: torch.Tensor, chunk: int) -> torch.Tensor:
    """Sum of next-token losses over the trained positions; `head` is the model's output Linear."""
    h, t = trained_positions(hidden, labels)
    if h.shape[0] == 0:  # nothing trained in this micro-batch: a zero that still joins the graph
        return hidden.sum() * 0.0
    return LinearCrossEntropy.apply(h, head.weight, head.bias, t, chunk)


def supports_chunked_loss(model: Any) -> str | None:
    """None when the chunked loss computes what the model's own loss would; else why it cannot.

    Needs a plain Linear output head over the decoder's last hidden state: no logit soft-capping or
    scaling (Gemma 2, Cohere) and no virtual tokens prepended by PEFT prompt learning.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel) and model.peft_config[model.active_adapter].is_prompt_learning:
        return "prompt-learning methods prepend virtual tokens inside PEFT's forward"
    lm = model.get_base_model() if isinstance(model, PeftModel) else model
    config = getattr(lm, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(config, attr, None) not in (None, 1, 1.0):
            return f"the model scales its logits ({attr})"
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear:
        return f"the output head is {type(head).__name__}, not a plain Linear"
    if not hasattr(lm, "get_decoder") or lm.get_decoder() is None:
        return "the model has no separate decoder to run without its head"
    return None


def decoder_and_head(model: Any) -> tuple[Any, Any]:
    """The decoder stack (with any adapter layers injected in it) and the output head."""
    from peft import PeftModel

    lm = model.get_base_model() if isinstance(model, PeftModel) else model
    return lm.get_decoder(), lm.get_output_embeddings()
