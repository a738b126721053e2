"""A sample as readable text: runs of trained and context tokens, each decoded as the tokenizer
decodes the whole sample.

Why not decode token by token: SentencePiece vocabularies (Llama 2, Mistral, Phi-3) keep a word's
leading space inside the token ("▁are") and `decode([one_token])` drops it at the start of the text,
so joined single-token decodes glue words together ("Youareaterseassistant."). Each run is instead
cut out of the decoding of the sample up to the run's end:

    ids     [ You | ▁are | ▁a | ▁terse | ▁assistant | . | <|end|> | ... ]
    labels    -100  -100   ...                          id     id
    text    decode(ids[:e1]) = "You are a terse assistant."   run 1 = that
            decode(ids[:e2]) = "You are ... assistant.<|end|>"  run 2 = the rest after run 1's text

When a longer decoding does not start with the shorter one (a multi-byte character split across the
boundary), that run is decoded on its own instead.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


def decoded_runs(tokenizer: Any, input_ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    """[(text, trained)] for the maximal runs of tokens that are all trained or all context."""
    bounds: list[tuple[int, int, bool]] = []
    start = 0
    for k in range(1, len(input_ids) + 1):
        if k == len(input_ids) or (labels[k] != IGNORE) != (labels[start] != IGNORE):
            bounds.append((start, k, labels[start] != IGNORE))
            start = k
    out: list[tuple[str, bool]] = []
    shown = ""
    for lo, hi, trained in bounds:
        text = tokenizer.decode(input_ids[:hi])
        piece = text[len(shown) :] if text.startswith(shown) else tokenizer.decode(input_ids[lo:hi])
        shown = text
        out.append((piece, trained))
    return out
