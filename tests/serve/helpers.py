"""Shared by the serve tests: independent reference generations and an SSE parser."""

from __future__ import annotations

import json
from typing import Any


def raw_continuation(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of raw text computed with transformers directly (not through lmtune.serve):
    the tokenizer's own special tokens, no chat template, decoded up to the first end token."""
    import torch

    from lmtune.infer.generate import _eos_ids

    eos = _eos_ids(model, tokenizer)
    enc = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos[0],
            temperature=None,
            top_p=None,
            top_k=None,
        )
    row = out[0, enc["input_ids"].shape[1] :].tolist()
    end = next((i for i, t in enumerate(row) if t in eos), len(row))
    return tokenizer.decode(row[:end], skip_special_tokens=True)


def parse_sse(body: str) -> list[Any]:
    """The payloads of a server-sent event stream, checking its framing: every event is one
    `data: ...` line followed by a blank line, and the stream ends with `data: [DONE]`."""
    assert body.endswith("\n\n"), body[-80:]
    events = body[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    assert events[-1] == "data: [DONE]"
    return [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
