"""Loss and perplexity on the tokens training would train: the same template rendering and masking.

Scoring every token (prompt, system text, role headers) would mostly measure how predictable the
template is; like training, only the assistant answers count. Per record we keep the summed
negative log-likelihood and the token count, so the corpus loss is token-weighted (sum / count),
exactly the number training's eval loss reports for the same records.
"""

from __future__ import annotations

import math
from typing import Any

from lmtune.eval.items import EvalItem


def conversation_nll(
    model: Any,
    tokenizer: Any,
    items: list[EvalItem],
    *,
    max_length: int = 1024,
    train_on: str = "all",
    batch_size: int = 4,
) -> list[tuple[float, int] | None]:
    """(summed NLL, trained tokens) per item, None where the item has no answer to score."""
    import torch

    from lmtune.tokenize.masking import IGNORE, MaskingError, tokenize_conversations

    scorable = [k for k, it in enumerate(items) if it.messages]
    samples = tokenize_conversations(
        tokenizer,
        [(items[k].messages, items[k].tools) for k in scorable],
        max_length=max_length,
        train_on=train_on,
    )
    todo = [(k, s) for k, s in zip(scorable, samples) if not isinstance(s, MaskingError)]
    todo.sort(key=lambda ks: len(ks[1].input_ids))  # similar lengths together: little padding
    out: list[tuple[float, int] | None] = [None] * len(items)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for lo in range(0, len(todo), batch_size):
                chunk = todo[lo : lo + batch_size]
                width = max(len(s.input_ids) for _, s in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, (_, s) in enumerate(chunk):
                    n = len(s.input_ids)
                    ids[row, :n], labels[row, :n], mask[row, :n] = (
                        torch.tensor(s.input_ids),
                        torch.tensor(s.labels),
                        1,
                    )
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                logits = logits[:, -width:]  # prompt tuning puts virtual tokens in front: drop them
                nll = torch.nn.functional.cross_entropy(
                    logits[:, :-1].float().transpose(1, 2),
                    labels[:, 1:].to(logits.device),
                    ignore_index=IGNORE,
                    reduction="none",
                )
                trained = labels[:, 1:] != IGNORE
                for row, (k, _) in enumerate(chunk):
                    out[k] = (float(nll[row].sum()), int(trained[row].sum()))
    finally:
        if was_training:
            model.train()
    return out


def corpus_loss(per_item: list[tuple[float, int] | None]) -> dict[str, float | int | None]:
    """Token-weighted loss over the scored items, its perplexity, and how many items and tokens."""
    scored = [x for x in per_item if x is not None and x[1] > 0]
    tokens = sum(n for _, n in scored)
    if not tokens:
        return {"loss": None, "perplexity": None, "loss_records": 0, "loss_tokens": 0}
    loss = sum(s for s, _ in scored) / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "loss_records": len(scored),
        "loss_tokens": tokens,
    }
