"""Pretraining text for a run, from the memory-mapped token store (lmtune.datastore.text_store):
read and tokenised in one streaming pass per corpus + tokenizer, then memory-mapped by this and
every later run (and every rank of a distributed one).

Why: the list path (Session.load_data + lmtune.tokenize.blocks.build_blocks) holds every document's
text and every token as Python objects (estimated ~45 bytes per token: an int object and two list
slots); a corpus of a few GB of text does not fit. Here a run holds document numbers and cumulative lengths only; blocks are cut from the mapped
token file as the DataLoader asks (lmtune.datastore.blocks.TokenBlocks). What the run prints and
writes is what the list path did: the per-file lines, the skipped-records line, the validation
split by documents (or by blocks when there is one document), the statistics and the rejects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmtune.data.records import Reject, count_reasons
from lmtune.errors import DataError


@dataclass
class PretrainData:
    train: Any  # TokenBlocks
    val: Any  # TokenBlocks
    split: str  # "documents" | "blocks" | "file" | "none"
    rejects: list[Reject]
    info: dict[str, Any]
    train_stats: dict[str, Any]
    val_stats: dict[str, Any]
    store: Any


def load_pretrain_data(s: Any, tokenizer: Any) -> PretrainData:
    """The training and validation blocks of `s.cfg` (a Session), built or memory-mapped."""
    from lmtune.data.sources import SourceSpec, training_specs
    from lmtune.datastore.blocks import TokenBlocks
    from lmtune.datastore.text_store import build_or_load_text
    from lmtune.datastore.views import split_indices
    from lmtune.tokenize.cache import default_cache_dir
    from lmtune.train.sft_data import _scratch_dir, store_info

    cfg, d = s.cfg, s.cfg.data
    cache_dir = default_cache_dir() if d.cache else _scratch_dir()
    kw = {"cache_dir": cache_dir, "text_split": d.text_split, "on_error": d.on_error}

    def build() -> tuple[Any, Any]:
        st = build_or_load_text(
            training_specs(d, "pretrain"), tokenizer, mix=(d.mix, d.mix_stop, d.seed), **kw
        )
        val_st = None
        if d.val_path:
            spec = SourceSpec(d.val_path, Path(d.val_path).name, d.format, dict(d.columns), dict(d.roles))
            val_st = build_or_load_text([spec], tokenizer, **kw)
        return st, val_st

    st, val_st = s.main_first(build)  # rank 0 builds, the others map it
    per = st.meta["per_dataset"]
    for row in per:
        s.console.print(
            f"Read {row['name']}: {row['format']} format, {row['usable']} of {row['read']} records usable"
            + (f", {row['used']} used in the mix" if len(per) > 1 else "")
        )
    rejects = st.rejects()
    if rejects:
        counts = ", ".join(f"{n} {r}" for r, n in count_reasons(rejects).items())
        s.console.print(
            f"[yellow]{len(rejects)} of {st.meta['records_read']} records skipped: {counts} "
            f"(see {s.run.rejects})[/]"
        )
    docs = st.order
    L = d.max_length
    if val_st is not None:
        rejects += val_st.rejects()
        s.console.print(
            f"Validation file {d.val_path}: {val_st.meta['documents']} of {val_st.meta['records_read']} "
            "records usable"
        )
        train, val, split = TokenBlocks(st, docs, L), TokenBlocks(val_st, val_st.order, L), "file"
        train_stats, val_stats = train.stats(), val.stats()
    elif d.val_size and len(docs) > 1:
        size = int(d.val_size) if d.val_size >= 1 else d.val_size
        train_pos, val_pos = split_indices(len(docs), val_size=size, seed=d.seed)
        s.console.print(f"Validation split: {len(val_pos)} of {len(docs)} documents")
        train, val, split = (
            TokenBlocks(st, docs[train_pos], L),
            TokenBlocks(st, docs[val_pos], L),
            "documents",
        )
        train_stats, val_stats = train.stats(), val.stats()
    elif d.val_size:
        train, val, train_stats, val_stats = _split_blocks(s, st, docs, L)
        split = "blocks"
    else:
        train, val, split = TokenBlocks(st, docs, L), TokenBlocks(st, docs[:0], L), "none"
        train_stats, val_stats = train.stats(), val.stats()
    if st.hit:
        s.console.print(f"Tokenised text reused from the cache: {st.path}")
    return PretrainData(train, val, split, rejects, store_info(cfg, st), train_stats, val_stats, st)


def _split_blocks(s: Any, st: Any, docs: np.ndarray, max_length: int) -> tuple[Any, Any, dict, dict]:
    """One document: its blocks are split (the rule of train/pretrain.py's list path)."""
    from lmtune.datastore.blocks import TokenBlocks
    from lmtune.datastore.views import split_indices

    d = s.cfg.data
    whole = TokenBlocks(st, docs, max_length)
    n = len(whole)
    if n < 2:
        raise DataError(
            f"val_size needs a second block, but the one document is only {whole.total} tokens "
            f"({n} block of max_length {max_length}).",
            file=d.path,
            hint="add text, lower data.max_length, give a data.val_path, or set val_size: 0.",
        )
    size = int(d.val_size) if d.val_size >= 1 else d.val_size
    train_blocks, val_blocks = split_indices(n, val_size=size, seed=d.seed)
    s.console.print(
        f"Validation split: the data is one document, so {len(val_blocks)} of its {n} blocks are held out "
        "(use text_split: line, several files or data.val_path to hold out whole documents)"
    )
    train, val = whole.subset(train_blocks), whole.subset(val_blocks)
    val_tokens = val.tokens()
    train_stats = {**train.stats(), "tokens": whole.total - val_tokens, "dropped_tokens": whole.dropped}
    val_stats = {**val.stats(), "tokens": val_tokens, "dropped_tokens": 0}
    return train, val, train_stats, val_stats
