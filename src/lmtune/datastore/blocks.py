"""Pretraining blocks cut on demand from a memory-mapped token store (lmtune.datastore.text_store).

The chosen documents (all, or one part of a validation split, in training order) form a virtual
stream; block b is tokens [b * max_length, (b + 1) * max_length) of it, gathered from the documents
it overlaps when the DataLoader asks for it:

    docs (order)   |--- d3: 700 ---|-- d0: 300 --|------ d5: 1100 ------|     cum = [700, 1000, 2100]
    blocks of 512  |--- b0 ---|--- b1 ---|--- b2 ---|--- b3 ---|-- b4 --|     b1 = d3[512:700] + d0[0:300] + d5[0:24]

The rule of lmtune.tokenize.blocks.cut_blocks holds: a last block under MIN_LAST_BLOCK tokens is
dropped and counted. A process holds the document numbers and their cumulative lengths (16 bytes
per document), never the tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lmtune.tokenize.blocks import MIN_LAST_BLOCK


class TokenBlocks:
    """Map-style dataset of {"input_ids", "labels"} blocks (labels = input ids)."""

    def __init__(self, store: Any, docs: np.ndarray, max_length: int, blocks: np.ndarray | None = None):
        self.store = store
        self.docs = np.asarray(docs, dtype=np.int64)
        self.max_length = max_length
        lengths = store.doc_len[self.docs]
        self.cum = np.cumsum(lengths) if len(lengths) else np.zeros(0, np.int64)
        self.total = int(self.cum[-1]) if len(self.cum) else 0
        n = -(-self.total // max_length)
        self.dropped = 0
        if n and self.total - (n - 1) * max_length < MIN_LAST_BLOCK:
            self.dropped = self.total - (n - 1) * max_length
            n -= 1
        self.count = n  # blocks of the whole stream
        self.blocks = np.arange(n, dtype=np.int64) if blocks is None else np.asarray(blocks, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def documents(self) -> int:
        return len(self.docs)

    def block_length(self, b: int) -> int:
        return min(self.max_length, self.total - b * self.max_length)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per block (max_length, but the last one): for length-grouped sampling."""
        out = np.full(len(self.blocks), self.max_length, dtype=np.int32)
        if len(self.blocks):
            last = self.blocks == self.count - 1
            out[last] = self.block_length(self.count - 1)
        return out

    def ids(self, b: int) -> np.ndarray:
        """The token ids of block b of the stream."""
        start, end = b * self.max_length, min((b + 1) * self.max_length, self.total)
        k = int(np.searchsorted(self.cum, start, side="right"))
        pieces = []
        pos = start
        while pos < end:
            doc = self.docs[k]
            doc_begin = int(self.cum[k]) - int(self.store.doc_len[doc])
            a = int(self.store.starts[doc]) + pos - doc_begin
            take = min(end, int(self.cum[k])) - pos
            pieces.append(self.store.tokens[a : a + take])
            pos += take
            k += 1
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ids = self.ids(int(self.blocks[i])).tolist()
        return {"input_ids": ids, "labels": list(ids)}

    def subset(self, blocks: np.ndarray) -> TokenBlocks:
        """Some blocks of this stream (a validation split by blocks, when there is one document)."""
        out = TokenBlocks.__new__(TokenBlocks)
        out.__dict__.update(self.__dict__)
        out.blocks = self.blocks[np.asarray(blocks, dtype=np.int64)]
        return out

    def tokens(self) -> int:
        """Tokens in this dataset's blocks (the whole stream's, dropped tail included, when all)."""
        if len(self.blocks) == self.count:
            return self.total
        return int(sum(self.block_length(int(b)) for b in self.blocks))

    def stats(self) -> dict[str, Any]:
        """The fields of lmtune.tokenize.blocks.BlockSet.stats."""
        last = self.block_length(int(self.blocks[-1])) if len(self.blocks) else 0
        return {
            "documents": len(self.docs),
            "tokens": self.tokens(),
            "blocks": len(self.blocks),
            "max_length": self.max_length,
            "last_block_tokens": last,
            "dropped_tokens": self.dropped if len(self.blocks) == self.count else 0,
            "separators": self.store.meta["separators"],
        }
