"""The key of a tokenised store: a sha256 of everything that decides its samples.

    the data            per file: sha256 of its bytes, its name (samples carry "name#record"),
                        and how it is read (format, columns, roles, system, limit, weight);
                        the mix (how, stop, seed) and on_error
    the tokenizer       lmtune.tokenize.cache.tokenizer_fingerprint (chat template, vocabulary,
                        backend definition, special tokens) and the data.template choice
    the settings        max_length, train_on
    the code            STORE_VERSION, lmtune's masking/template/reader/format source, the
                        datastore's own source, transformers' and tokenizers' versions

Why the file's bytes and not its records: hashing bytes streams at disk speed (about 1 GB/s) and
needs no parsing, so a warm run knows in seconds, without reading a record, that its store is valid.
Packing is not in the key: the stored samples do not depend on it; a packing plan is derived from
the stored lengths and cached beside them under its row width (lmtune.datastore.packing).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from lmtune.data.sources import SourceSpec
from lmtune.tokenize.cache import _code_fingerprint, tokenizer_fingerprint

STORE_VERSION = 2  # bump when the stored layout or its meaning changes


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def store_key(
    specs: list[SourceSpec],
    tokenizer: Any,
    *,
    max_length: int,
    train_on: str,
    template: str | None = None,
    on_error: str = "skip",
    mix: tuple[str, str, int] = ("concat", "first_exhausted", 42),
) -> str:
    """sha256 hex of everything that decides the stored samples (see the module docstring)."""
    files = [
        {
            "sha256": file_sha256(s.path),
            "name": Path(s.path).name,
            "format": s.format,
            "columns": s.columns,
            "roles": s.roles,
            "system": s.system,
            "limit": s.limit,
            "weight": s.weight,
        }
        for s in specs
    ]
    head = {
        "version": STORE_VERSION,
        "code": {**_code_fingerprint(), "store": _store_code()},
        "files": files,
        "mix": list(mix) if len(specs) > 1 or specs[0].weight != 1.0 else None,
        "on_error": on_error,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": template,
        "max_length": max_length,
        "train_on": train_on,
    }
    return hashlib.sha256(
        json.dumps(head, sort_keys=True, ensure_ascii=False, default=repr).encode()
    ).hexdigest()


@lru_cache(maxsize=1)
def _store_code() -> str:
    """How records are read and stored: a fix to a reader or a format must not be hidden by a store
    built before it."""
    from lmtune.data import formats, load, readers, sources, validate
    from lmtune.datastore import store, stream

    h = hashlib.sha256()
    for module in (readers, formats, validate, load, sources, stream, store):
        h.update(Path(module.__file__ or "").read_bytes())
    return h.hexdigest()
