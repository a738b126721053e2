"""Raw text for continued pretraining, tokenised once into a memory-mapped token file: corpora larger
than RAM are read in one streaming pass and never held as Python lists.

Why not the sft store (Arrow rows): a pretraining block is a window of the joined document stream,
not a record, so what is stored is the stream itself and where each document starts:

    tokens.bin   int32   every document's ids, framed as lmtune.tokenize.blocks frames them
                         [BOS] d0 d0 d0 [EOS] [BOS] d1 d1 [EOS] [BOS] d2 ... [EOS]
    docs.npy     int64   each document's token count, in file order (start = cumulative sum)
    order.npy    int64   the documents in training order (the data.mix of several files)
    meta.json            per-file counts, separators, the reading rejects' count
    rejects.jsonl        every skipped record, as lmtune.data.text.load_texts rejects it

A block (TokenBlocks) is cut from the virtual stream of the chosen documents when the DataLoader asks
for it, so a validation split by documents is only a second array of document numbers, and block i
equals lmtune.tokenize.blocks.build_blocks(those documents).samples[i].

The folder is keyed (sha256) by the files' bytes and reading options, the mix, text_split, on_error,
the tokenizer and the code, built under a file lock into a temporary folder renamed into
`<cache>/text/<key>/`, like the sft store: one rank builds, the others map it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lmtune.data.records import Reject
from lmtune.data.sources import SourceSpec, open_file
from lmtune.datastore.stream import RejectSink, StreamStats, per_dataset_rows, tally

TEXT_STORE_VERSION = 1
META = "meta.json"


def stream_documents(
    spec: SourceSpec, *, on_error: str, text_split: str, sink: RejectSink, stats: StreamStats
) -> Iterator[str]:
    """The texts of one file, in order, one at a time: lmtune.data.text.load_texts' checks, rejects
    and errors (open_texts serves both) without its whole-file list."""
    stats.format = "text"
    opened = open_file(spec, "pretrain", on_error=on_error, text_split=text_split)
    for doc in tally(opened.items, sink, stats):
        yield doc.text


@dataclass
class TextStore:
    """A built token store, memory-mapped."""

    path: Path
    hit: bool
    meta: dict[str, Any]
    tokens: np.ndarray  # int32 memmap: the framed documents, back to back
    doc_len: np.ndarray  # int64, per document in file order
    order: np.ndarray  # int64, the documents in training order
    starts: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))

    def rejects(self) -> list[Reject]:
        path = self.path / "rejects.jsonl"
        if not path.is_file():
            return []
        with path.open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        return [Reject(**{k: d.get(k) for k in Reject.__dataclass_fields__}) for d in rows]


def build_or_load_text(
    specs: list[SourceSpec],
    tokenizer: Any,
    *,
    cache_dir: str | Path,
    text_split: str = "document",
    on_error: str = "skip",
    mix: tuple[str, str, int] = ("concat", "first_exhausted", 42),
    on_build: Any = None,
) -> TextStore:
    """The token store of these files: memory-mapped if built, else built once (under a lock)."""
    from filelock import FileLock

    key = text_key(specs, tokenizer, text_split=text_split, on_error=on_error, mix=mix)
    root = Path(cache_dir) / "text"
    final = root / key
    if not (final / META).is_file():
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / f"{key}.lock")):
            if not (final / META).is_file():
                if on_build is not None:
                    on_build(key)
                _build(specs, tokenizer, final, key, text_split, on_error, mix)
                return open_text_store(final, hit=False)
    return open_text_store(final, hit=True)


def open_text_store(path: Path, *, hit: bool = True) -> TextStore:
    meta = json.loads((path / META).read_text(encoding="utf-8"))
    n = meta["tokens"]
    tokens = (
        np.memmap(path / "tokens.bin", dtype=np.int32, mode="r", shape=(n,)) if n else np.zeros(0, np.int32)
    )
    doc_len = np.load(path / "docs.npy")
    starts = np.zeros(len(doc_len), dtype=np.int64)
    np.cumsum(doc_len[:-1], out=starts[1:])
    return TextStore(path, hit, meta, tokens, doc_len, np.load(path / "order.npy"), starts)


def text_key(
    specs: list[SourceSpec], tokenizer: Any, *, text_split: str, on_error: str, mix: tuple[str, str, int]
) -> str:
    from lmtune.datastore.key import file_sha256
    from lmtune.tokenize.cache import tokenizer_fingerprint

    head = {
        "version": TEXT_STORE_VERSION,
        "code": _code(),
        "files": [
            {
                "sha256": file_sha256(s.path),
                "name": Path(s.path).name,
                "format": s.format,
                "columns": s.columns,
                "limit": s.limit,
                "weight": s.weight,
            }
            for s in specs
        ],
        "mix": list(mix) if len(specs) > 1 or specs[0].weight != 1.0 else None,
        "text_split": text_split,
        "on_error": on_error,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    return hashlib.sha256(json.dumps(head, sort_keys=True, default=repr).encode()).hexdigest()


@lru_cache(maxsize=1)
def _code() -> str:
    """The reading, framing and storing source: a fix to any of them must not hide behind a store."""
    import tokenizers
    import transformers

    from lmtune.data import load, readers, sources, text
    from lmtune.tokenize import blocks

    h = hashlib.sha256(f"{transformers.__version__} {tokenizers.__version__}".encode())
    for module in (readers, load, sources, text, blocks):
        h.update(Path(module.__file__ or "").read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()


def _build(
    specs: list[SourceSpec],
    tokenizer: Any,
    final: Path,
    key: str,
    text_split: str,
    on_error: str,
    mix: tuple[str, str, int],
) -> None:
    from lmtune.tokenize.blocks import separators, token_stream

    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key[:16]}-"))
    try:
        sink = RejectSink(tmp / "rejects.jsonl")
        per: list[StreamStats] = []
        doc_len = array("q")
        total = 0
        try:
            with (tmp / "tokens.bin").open("wb") as out:
                for spec in specs:
                    stats = StreamStats(spec.path)
                    per.append(stats)
                    texts = stream_documents(
                        spec, on_error=on_error, text_split=text_split, sink=sink, stats=stats
                    )
                    for ids in token_stream(texts, tokenizer):
                        out.write(np.asarray(ids, dtype=np.int32).tobytes())
                        doc_len.append(len(ids))
                        total += len(ids)
        finally:
            sink.close()
        counts = np.frombuffer(doc_len, dtype=np.int64) if len(doc_len) else np.zeros(0, np.int64)
        np.save(tmp / "docs.npy", counts)
        offsets = np.concatenate([[0], np.cumsum([s.usable for s in per])]).tolist()
        used = [s.usable for s in per]
        if len(specs) > 1 or specs[0].weight != 1.0:
            from lmtune.data.mix import mix_records

            ranges = [range(a, b) for a, b in zip(offsets, offsets[1:])]
            order, used = mix_records(ranges, [s.weight for s in specs], how=mix[0], stop=mix[1], seed=mix[2])
            np.save(tmp / "order.npy", np.asarray(order, dtype=np.int64))
        else:
            np.save(tmp / "order.npy", np.arange(len(counts), dtype=np.int64))
        before, after = separators(tokenizer)
        meta = {
            "key": key,
            "tokens": total,
            "documents": len(counts),
            "records_read": sum(s.read for s in per),
            "read_rejected": sink.total,
            "rejected_by_reason": sink.by_reason(),
            "separators": {
                "before": tokenizer.convert_ids_to_tokens(before),
                "after": tokenizer.convert_ids_to_tokens(after),
            },
            "per_dataset": per_dataset_rows(specs, per, used),
        }
        (tmp / META).write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / META).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
