"""Raw-text documents -> one token stream -> fixed-length training blocks (continued pretraining).

Every document is tokenised on its own, framed by the tokenizer's separators, and the framed
documents are joined into one stream that is cut into `max_length`-token blocks:

    doc 1 "To be, or not"      doc 2 "Once upon a time ..."          doc 3 "Hi"
    [BOS] t t t t [EOS] [BOS] t t t t t t t t t t t t t t [EOS] [BOS] t [EOS]
    |<------ block 1: max_length ------>|<------ block 2: max_length ---->|<-- last -->|

- [BOS] is added only where the tokenizer itself puts one in front of text (Llama, Mistral, Gemma
  tokenizers do; GPT-2, Qwen and SmolLM2 do not), so the model sees text framed the way it was
  pretrained. [EOS] (the tokenizer's eos token) ends every document: it teaches the model where a
  document stops, and it is the only boundary marker where bos == eos (GPT-2's <|endoftext|>).
  For SmolLM2-Instruct that is `doc <|im_end|> doc <|im_end|> ...`.
- Documents are packed: a block may hold the end of one document and the start of the next
  (attention is not masked between them; the [EOS] tells the model a new text begins), and a long
  document runs over as many blocks as it needs. Nothing is truncated and nothing is padded.
- Labels are the input ids: the loss is on every token (the model shifts them by one itself).
- The last, shorter block is kept when it has at least 2 tokens (one prediction); small datasets
  matter here. A single leftover token cannot be trained on and is counted as `dropped_tokens`.

Tokenisation is batched on the fast tokenizer and never truncates, with the "longer than the
model's maximum length" warning turned off: documents are meant to be longer than a block.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmtune.tokenize.masking import Tokenized

MIN_LAST_BLOCK = 2  # tokens: a block needs two to give the loss one next-token prediction
_BATCH_CHARS = 1_000_000  # characters tokenised per call: bounded memory, few calls


@dataclass
class BlockSet:
    """Training blocks (usable by SampleDataset / PadCollator) and where they came from."""

    samples: list[Tokenized] = field(default_factory=list)
    documents: int = 0
    tokens: int = 0  # the whole stream, separators included
    dropped_tokens: int = 0  # a last block shorter than MIN_LAST_BLOCK
    max_length: int = 0
    separators: dict[str, list[str]] = field(default_factory=dict)

    def stats(self) -> dict[str, Any]:
        last = len(self.samples[-1].input_ids) if self.samples else 0
        return {
            "documents": self.documents,
            "tokens": self.tokens,
            "blocks": len(self.samples),
            "max_length": self.max_length,
            "last_block_tokens": last,
            "dropped_tokens": self.dropped_tokens,
            "separators": self.separators,
        }


def separators(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(before, after): the ids framing every document.

    `before` is what the tokenizer itself adds in front of text (its BOS, if it adds one); `after`
    is the eos token, or nothing for a tokenizer without one.
    """
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    framed = tokenizer(probe)["input_ids"]
    before: list[int] = []
    for start in range(len(framed) - len(plain) + 1):
        if framed[start : start + len(plain)] == plain:
            before = list(framed[:start])
            break
    eos = tokenizer.eos_token_id
    return before, ([eos] if eos is not None else [])


def token_stream(texts: Sequence[str], tokenizer: Any) -> Iterator[list[int]]:
    """Each text's token ids, framed by `separators`, in order (tokenised in batches)."""
    before, after = separators(tokenizer)
    for batch in _batches(texts):
        encoded = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        for ids in encoded:
            yield [*before, *ids, *after]


def _batches(texts: Sequence[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for text in texts:
        if batch and size + len(text) > _BATCH_CHARS:
            yield batch
            batch, size = [], 0
        batch.append(text)
        size += len(text)
    if batch:
        yield batch


def cut_blocks(stream: list[int], max_length: int) -> tuple[list[list[int]], int]:
    """(blocks, dropped): `max_length` slices of the stream; a last slice under MIN_LAST_BLOCK is dropped."""
    blocks = [stream[i : i + max_length] for i in range(0, len(stream), max_length)]
    dropped = 0
    if blocks and len(blocks[-1]) < MIN_LAST_BLOCK:
        dropped = len(blocks.pop())
    return blocks, dropped


def build_blocks(documents: Sequence[Any], tokenizer: Any, *, max_length: int) -> BlockSet:
    """Tokenise, join and cut `documents` (strings or objects with `.text`) into training blocks."""
    texts = [d if isinstance(d, str) else d.text for d in documents]
    stream: list[int] = []
    for ids in token_stream(texts, tokenizer):
        stream.extend(ids)
    blocks, dropped = cut_blocks(stream, max_length)
    before, after = separators(tokenizer)
    return BlockSet(
        samples=[Tokenized(input_ids=b, labels=list(b)) for b in blocks],
        documents=len(texts),
        tokens=len(stream),
        dropped_tokens=dropped,
        max_length=max_length,
        separators={
            "before": tokenizer.convert_ids_to_tokens(before),
            "after": tokenizer.convert_ids_to_tokens(after),
        },
    )
