"""A disk cache of tokenised + masked records, keyed by a hash of everything that decides them.

Why: re-running a config (a new learning rate, a resumed run, `lmtune data inspect` then
`lmtune train`) should not tokenise the same data again. Why a content hash and not a file
name or date: the cache must never hand back samples that a fresh computation would not produce.
The key is the sha256 of

    the records' canonical content       every Conversation.to_dict() (messages, tools, weights), in order
    the tokenizer's identity             chat template, vocabulary size, sha256 of the backend tokenizer
                                         JSON (vocab, merges, normaliser, added tokens), special tokens,
                                         split_special_tokens, tokenizer class
    the masking settings                 max_length, train_on
    the code that produced them          CACHE_VERSION, a hash of lmtune's masking and template source,
                                         transformers' and tokenizers' versions

so a changed record, template, tokenizer, setting, masking fix or library upgrade is a miss.
Sources (file#record) are not part of the key and not stored: they are re-attached from the
records being tokenised, so the same content read from a renamed file is a hit that still points
at the right file.

Layout: `<cache_dir>/tokenized/<key>.npz`, an uncompressed numpy archive (no pickle, so a file in a
shared cache cannot run code when loaded):

    key, version     checked on load
    lengths  int64   one per record: its sample's token count, or -1 if the record was rejected
    ids, labels      int32, every sample's tokens concatenated in record order
    truncated bool   one per record
    rejects  str     JSON {record index: [reason, message]}

Files are written to a temporary name and renamed into place (os.replace), so a reader (another
rank, a parallel run) sees a whole file or none. A file that cannot be read or does not match is
ignored with a CacheWarning and the records are tokenised again; so is a cache folder that cannot
be written. Nothing here ever stops a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lmtune.data.records import Conversation
from lmtune.tokenize.masking import MaskingError, Tokenized

CACHE_VERSION = 1  # bump when the stored layout or its meaning changes
SUFFIX = ".npz"

Outcome = Tokenized | MaskingError


class CacheWarning(UserWarning):
    """The tokenisation cache could not be used (unreadable or unwritable); the run goes on without it."""


def default_cache_dir() -> Path:
    """`$LMTUNE_CACHE` if set, else lmtune's home for caches ($LMTUNE_HOME or ~/.cache/lmtune)."""
    from lmtune.models.resolve import lmtune_home

    env = os.environ.get("LMTUNE_CACHE")
    return Path(env).expanduser() if env else lmtune_home()


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / "tokenized" / f"{key}{SUFFIX}"


def cached_outcomes(
    cache_dir: str | Path,
    records: Sequence[Conversation],
    tokenizer: Any,
    *,
    max_length: int,
    train_on: str,
    compute: Callable[[], list[Outcome]],
) -> tuple[list[Outcome], Path, bool]:
    """The per-record outcomes (sample or MaskingError) from the cache, or from `compute()` (then
    stored). Returns (outcomes, cache file, whether it was a hit)."""
    key = cache_key(records, tokenizer, max_length=max_length, train_on=train_on)
    path = cache_path(cache_dir, key)
    loaded = read_outcomes(path, key, len(records))
    if loaded is not None:
        return loaded, path, True
    outcomes = compute()
    write_outcomes(path, key, outcomes)
    return outcomes, path, False


def cache_key(records: Sequence[Conversation], tokenizer: Any, *, max_length: int, train_on: str) -> str:
    """sha256 hex of everything that decides the tokenised samples (see the module docstring)."""
    head = {
        "version": CACHE_VERSION,
        "code": _code_fingerprint(),
        "max_length": max_length,
        "train_on": train_on,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    h = hashlib.sha256(_json(head).encode())
    for conv in records:
        h.update(b"\n")  # json.dumps never writes a raw newline, so records cannot run together
        h.update(_json(conv.to_dict()).encode())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """What identifies a tokenizer for masking. A name is not enough: a local folder, a GGUF or a
    changed template all keep `name_or_path` while tokenising differently."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = backend.to_str()
    else:  # a slow (Python) tokenizer: its vocabulary and added tokens are what it knows
        definition = _json({"vocab": tokenizer.get_vocab(), "added": str(tokenizer.added_tokens_decoder)})
    return {
        "class": type(tokenizer).__name__,
        "chat_template": tokenizer.chat_template,  # str, dict of named templates, or None
        "vocab_size": tokenizer.vocab_size,
        "len": len(tokenizer),
        "backend_sha256": hashlib.sha256(definition.encode()).hexdigest(),
        "special_tokens": tokenizer.special_tokens_map,
        "split_special_tokens": getattr(tokenizer, "split_special_tokens", None),
    }


@lru_cache(maxsize=1)
def _code_fingerprint() -> dict[str, str]:
    """lmtune's masking source and the libraries that render and tokenise: a fix to any of them must
    not be hidden by samples cached before it."""
    import tokenizers
    import transformers

    from lmtune.tokenize import masking, spans, templates

    h = hashlib.sha256()
    for module in (masking, spans, templates):
        h.update(Path(module.__file__ or "").read_bytes())
    return {
        "lmtune": h.hexdigest(),
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)


def read_outcomes(path: Path, key: str, count: int) -> list[Outcome] | None:
    """The outcomes stored at `path`, or None (a miss) if there is no such file or it is unusable."""
    if not path.is_file():
        return None
    try:
        return _decode(path, key, count)
    except Exception as err:  # noqa: BLE001 - any broken cache file means "recompute", never a crash
        warnings.warn(
            f"ignoring the unreadable tokenisation cache file {path} ({type(err).__name__}: {err}); "
            "the records are tokenised again and the file is rewritten",
            CacheWarning,
            stacklevel=3,
        )
        return None


def _decode(path: Path, key: str, count: int) -> list[Outcome]:
    with np.load(path, allow_pickle=False) as z:
        if str(z["key"]) != key or int(z["version"]) != CACHE_VERSION:
            raise ValueError("its key or format version does not match its name")
        lengths, truncated = z["lengths"], z["truncated"]
        ids, labels = z["ids"], z["labels"]
        rejects = json.loads(str(z["rejects"]))
    kept = lengths[lengths >= 0]
    if len(lengths) != count or len(truncated) != count:
        raise ValueError(f"it holds {len(lengths)} records, expected {count}")
    if int(kept.sum()) != len(ids) or len(ids) != len(labels) or len(rejects) != count - len(kept):
        raise ValueError("its arrays do not add up")
    id_list, label_list, flags = ids.tolist(), labels.tolist(), truncated.tolist()
    out: list[Outcome] = []
    pos = 0
    for k, n in enumerate(lengths.tolist()):
        if n < 0:
            reason, message = rejects[str(k)]
            out.append(MaskingError(reason, message))
        else:
            out.append(Tokenized(id_list[pos : pos + n], label_list[pos : pos + n], flags[k]))
            pos += n
    return out


def write_outcomes(path: Path, key: str, outcomes: Sequence[Outcome]) -> None:
    """Store `outcomes` at `path` atomically; a failure is a CacheWarning, not an error."""
    samples = [o for o in outcomes if isinstance(o, Tokenized)]
    arrays = {
        "key": np.array(key),
        "version": np.array(CACHE_VERSION),
        "lengths": np.array(
            [len(o.input_ids) if isinstance(o, Tokenized) else -1 for o in outcomes], np.int64
        ),
        "truncated": np.array([isinstance(o, Tokenized) and o.truncated for o in outcomes], dtype=bool),
        "ids": _concat([s.input_ids for s in samples]),
        "labels": _concat([s.labels for s in samples]),
        "rejects": np.array(
            _json({str(k): [o.reason, str(o)] for k, o in enumerate(outcomes) if isinstance(o, MaskingError)})
        ),
    }
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        warnings.warn(
            f"could not write the tokenisation cache file {path} ({err}); continuing without caching. "
            "Point LMTUNE_CACHE at a writable folder to enable it.",
            CacheWarning,
            stacklevel=3,
        )
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _concat(lists: list[list[int]]) -> np.ndarray:
    total = sum(len(x) for x in lists)
    return np.fromiter((t for x in lists for t in x), dtype=np.int32, count=total)
