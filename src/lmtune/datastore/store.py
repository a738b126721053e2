"""Tokenised SFT data on disk, memory-mapped: built once per content + tokenizer + settings, in
parallel, and shared by every later run and every rank of a distributed run.

Why: a Python list of samples costs ~10 KB per record (measured: ~7.5 KB of it is token ids and
labels held as Python ints, ~1 KB the Conversation objects), so 10M records would need ~100 GB of
RAM and a re-tokenisation on every run. Here the samples live in Arrow files that the OS pages in
on demand; a process holds only the rows it is reading.

Build (a miss), under a file lock so that concurrent ranks build once:

    files --stream_conversations--> records.arrow --datasets.map(num_proc)--> tokens-*.arrow
    (one pass, rejects -> rejects.jsonl)  {conv json, source}    {input_ids, labels, length, trained,
                                                                  truncated, reason, message, source}

then `meta.json` (counts, stats, rejects by reason, the first record with a system message),
`lengths.npy` (kept samples' lengths, for packing and statistics) and `rows.npz` (per row: length,
-1 where masking failed, trained tokens, truncated; a validation split takes its statistics from
it), all in a temporary folder renamed to `<cache>/datasets/<key>/` in one step: a reader sees a
whole store or none. rejects.jsonl holds the reading rejects (meta "read_rejected" of them) first,
then the masking rejects in row order, each with its record as read.

Load (a hit): hash the files (lmtune.datastore.key), open meta.json, memory-map the Arrow files.
Rows whose masking failed (reason != "") stay in the files and are left out by an index mapping.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmtune.data.records import Conversation, Reject
from lmtune.data.sources import SourceSpec
from lmtune.datastore.stream import RejectSink, StreamStats, per_dataset_rows, stream_conversations
from lmtune.tokenize.masking import MaskingError, tokenize_conversations

META = "meta.json"
BATCH = 1000  # records per Arrow batch and per map() call: small enough to keep memory flat
MAX_AUTO_PROC = 8
MIN_RECORDS_PER_PROC = 5000  # below this a worker's start-up (importing, copying the tokenizer) costs more


def auto_num_proc(records: int) -> int:
    """data.num_proc: auto = min(usable cores, 8, records // 5000), at least 1: one worker per core,
    but never a worker for fewer than 5,000 records, whose start-up would cost more than it saves."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_AUTO_PROC, records // MIN_RECORDS_PER_PROC))


@dataclass
class TokenizedStore:
    """A memory-mapped tokenised set. `dataset` has the columns input_ids and labels (int32 lists;
    labels -100 where not trained) and holds the usable samples only, in record order."""

    dataset: Any  # datasets.Dataset
    path: Path
    hit: bool
    meta: dict[str, Any]
    lengths: np.ndarray  # int32, one per usable sample
    sources: Any = field(repr=False, default=None)  # datasets.Dataset column view: "file#record"
    full: Any = field(repr=False, default=None)  # every row (input_ids, labels), masking rejects included
    # rows.npz, one entry per row: length (-1: masking failed), trained tokens, truncated
    rows: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    @property
    def rejects_file(self) -> Path:
        """Every record skipped while reading or masking, with file, record, line, reason and raw data."""
        return self.path / "rejects.jsonl"

    @property
    def stats(self) -> dict[str, Any]:
        return self.meta["stats"]

    def rejects(self, limit: int | None = None) -> Iterator[Reject]:
        """The stored rejects, read back from rejects.jsonl one at a time."""
        if not self.rejects_file.is_file():
            return
        with self.rejects_file.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if limit is not None and i >= limit:
                    return
                d = json.loads(line)
                yield Reject(**{k: d.get(k) for k in Reject.__dataclass_fields__})


def build_or_load(
    specs: list[SourceSpec],
    tokenizer: Any,
    *,
    cache_dir: str | Path,
    max_length: int,
    train_on: str,
    template: str | None = None,
    on_error: str = "skip",
    mix: tuple[str, str, int] = ("concat", "first_exhausted", 42),
    num_proc: int | None = None,
    on_build: Any = None,
) -> TokenizedStore:
    """The store for these files and settings: loaded if present, else built (once, under a lock).

    `on_build(key)` is called just before a build starts (tests count builds with it; the CLI
    prints a line). Ranks that find another process building wait on the lock, then load."""
    from filelock import FileLock

    from lmtune.datastore.key import store_key

    key = store_key(
        specs,
        tokenizer,
        max_length=max_length,
        train_on=train_on,
        template=template,
        on_error=on_error,
        mix=mix,
    )
    root = Path(cache_dir) / "datasets"
    final = root / key
    if not (final / META).is_file():
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / f"{key}.lock")):
            if not (final / META).is_file():  # another process may have built it while we waited
                if on_build is not None:
                    on_build(key)
                _build(specs, tokenizer, final, key, max_length, train_on, on_error, mix, num_proc)
                return open_store(final, hit=False)
    return open_store(final, hit=True)


def open_store(path: Path, *, hit: bool = True) -> TokenizedStore:
    """Memory-map a built store (no token is read until a row is asked for)."""
    from datasets import Dataset, concatenate_datasets

    meta = json.loads((path / META).read_text(encoding="utf-8"))
    parts = [Dataset.from_file(str(path / name)) for name in meta["arrow_files"]]
    full = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    kept = full if meta["kept_all"] else full.select(np.load(path / "kept.npy"))
    lengths = np.load(path / "lengths.npy", mmap_mode="r")
    with np.load(path / "rows.npz", allow_pickle=False) as z:
        rows = {k: z[k] for k in z.files}
    return TokenizedStore(
        dataset=kept.select_columns(["input_ids", "labels"]),
        path=path,
        hit=hit,
        meta=meta,
        lengths=lengths,
        sources=kept.select_columns(["source"]),
        full=full.select_columns(["input_ids", "labels"]),
        rows=rows,
    )


# ------------------------------------------------------------------------------------ build


def _build(
    specs: list[SourceSpec],
    tokenizer: Any,
    final: Path,
    key: str,
    max_length: int,
    train_on: str,
    on_error: str,
    mix: tuple[str, str, int],
    num_proc: int | None,
) -> None:
    from datasets import Dataset

    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key[:16]}-"))
    try:
        sink = RejectSink(tmp / "rejects.jsonl")
        per: list[StreamStats] = []
        first_system: dict[str, Any] = {}
        try:
            offsets = _write_records(specs, tmp / "records.arrow", on_error, sink, per, first_system)
        finally:
            sink.close()
        read_rejected = sink.total
        records = Dataset.from_file(str(tmp / "records.arrow"))
        used = [s.usable for s in per]
        if len(specs) > 1 or specs[0].weight != 1.0:
            from lmtune.data.mix import mix_records

            ranges = [range(a, b) for a, b in zip(offsets, offsets[1:])]
            order, used = mix_records(ranges, [s.weight for s in specs], how=mix[0], stop=mix[1], seed=mix[2])
            records = records.select(order)
        procs = num_proc or auto_num_proc(len(records))
        with _environ_kept():
            tokens = records.map(
                _tokenize_batch,
                batched=True,
                batch_size=BATCH,
                num_proc=procs if procs > 1 else None,
                fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "train_on": train_on},
                remove_columns=["conv"],
                features=_features(),
                cache_file_name=str(tmp / "tokens.arrow"),
                load_from_cache_file=False,
                new_fingerprint=key[:40],
                desc="Tokenising",
            )
        meta = _finish(tokens, records, tmp, sink, specs, per, used, key, procs)
        meta["read_rejected"] = read_rejected
        meta["first_system"] = first_system or None
        del tokens, records
        (tmp / "records.arrow").unlink()
        (tmp / META).write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
        try:
            os.rename(tmp, final)  # atomic: readers see the whole store or none
        except OSError:
            if not (final / META).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_records(
    specs: list[SourceSpec],
    out: Path,
    on_error: str,
    sink: RejectSink,
    per: list[StreamStats],
    first_system: dict[str, Any],
) -> list[int]:
    """Stream every file's conversations into one Arrow file; returns each file's start row (+ end).
    `first_system` gets the first conversation that opens with a system message (the chat template's
    system-role note is decided on it, as lmtune.tokenize.templates.check_system_role does)."""
    import pyarrow as pa

    schema = pa.schema([("conv", pa.string()), ("source", pa.string())])
    offsets = [0]
    with pa.OSFile(str(out), "wb") as fh, pa.ipc.new_stream(fh, schema) as writer:
        for spec in specs:
            stats = StreamStats(spec.path)
            per.append(stats)
            convs, sources = [], []
            for conv in stream_conversations(spec, on_error=on_error, sink=sink, stats=stats):
                if not first_system and conv.messages[:1] and conv.messages[0].role == "system":
                    first_system.update(conv=conv.to_dict(), source=conv.source)
                convs.append(_conv_json(conv))
                sources.append(conv.source)
                if len(convs) == BATCH:
                    writer.write_batch(pa.record_batch([convs, sources], schema=schema))
                    convs, sources = [], []
            if convs:
                writer.write_batch(pa.record_batch([convs, sources], schema=schema))
            offsets.append(offsets[-1] + stats.usable)
    return offsets


def _conv_json(conv: Conversation) -> str:
    """What masking needs, exactly as the in-memory path passes it (tools kept even when empty)."""
    return json.dumps(
        {"messages": [m.to_dict() for m in conv.messages], "tools": conv.tools}, ensure_ascii=False
    )


def _features() -> Any:
    from datasets import Features, Sequence, Value

    return Features(
        {
            "source": Value("string"),
            "input_ids": Sequence(Value("int32")),
            "labels": Sequence(Value("int32")),
            "length": Value("int32"),
            "trained": Value("int32"),
            "truncated": Value("bool"),
            "reason": Value("string"),
            "message": Value("string"),
        }
    )


def _tokenize_batch(
    batch: dict[str, list], tokenizer: Any, max_length: int, train_on: str
) -> dict[str, list]:
    """datasets.map worker: the same masking call as the in-memory path (tokenize_conversations)."""
    convs = []
    for text in batch["conv"]:
        d = json.loads(text)
        convs.append((d["messages"], d["tools"]))
    out: dict[str, list] = {
        k: [] for k in ("input_ids", "labels", "length", "trained", "truncated", "reason", "message")
    }
    for o in tokenize_conversations(tokenizer, convs, max_length=max_length, train_on=train_on):
        if isinstance(o, MaskingError):
            row = ([], [], 0, 0, False, o.reason, str(o))
        else:
            row = (o.input_ids, o.labels, len(o.input_ids), o.num_trained, o.truncated, "", "")
        for k, v in zip(out, row):
            out[k].append(v)
    return out


def _finish(
    tokens: Any,
    records: Any,
    tmp: Path,
    sink: RejectSink,
    specs: list[SourceSpec],
    per: list[StreamStats],
    used: list[int],
    key: str,
    procs: int,
) -> dict[str, Any]:
    """Masking rejects into rejects.jsonl (with the record as read, from `records`, row for row the
    same as `tokens`), the kept-row index, lengths and per-row arrays, and the statistics."""
    import pyarrow.compute as pc

    from lmtune.tokenize.dataset import masking_reject

    table = tokens.data
    ok = pc.equal(table.column("reason"), "").to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~ok)
    if len(bad):
        sink.path = tmp / "rejects.jsonl"
        for start in range(0, len(bad), BATCH):
            idx = bad[start : start + BATCH]
            rows = tokens.select_columns(["source", "reason", "message"]).select(idx)
            convs = records.select(idx)["conv"]
            for src, reason, message, conv in zip(rows["source"], rows["reason"], rows["message"], convs):
                sink.add(masking_reject(Conversation.from_dict(json.loads(conv), src), reason, message))
        sink.close()
        np.save(tmp / "kept.npy", np.flatnonzero(ok))
    row_length = table.column("length").to_numpy().astype(np.int32)
    row_length[~ok] = -1
    np.savez(
        tmp / "rows.npz",
        length=row_length,
        trained=table.column("trained").to_numpy().astype(np.int32),
        truncated=table.column("truncated").to_numpy(zero_copy_only=False).astype(bool),
    )
    lengths = table.column("length").to_numpy()[ok].astype(np.int32)
    np.save(tmp / "lengths.npy", lengths)
    trained = int(table.column("trained").to_numpy()[ok].sum())
    truncated = int(table.column("truncated").to_numpy(zero_copy_only=False)[ok].sum())
    files = [Path(f["filename"]).name for f in tokens.cache_files]
    return {
        "key": key,
        "arrow_files": files,
        "kept_all": bool(ok.all()),
        "rows": int(len(ok)),
        "num_proc": procs,
        "records_read": sum(s.read for s in per),
        "rejected": sink.total,
        "rejected_by_reason": sink.by_reason(),
        "per_dataset": per_dataset_rows(specs, per, used),
        "stats": length_stats(lengths, trained=trained, truncated=truncated, rejected=sink.total),
    }


def length_stats(lengths: np.ndarray, *, trained: int, truncated: int, rejected: int) -> dict[str, Any]:
    """The same fields as TokenizedSet.stats(), from a lengths array (no sample held)."""
    ordered = np.sort(lengths)
    n = len(ordered)
    points = (0, 50, 90, 99, 100)  # the rule of lmtune.tokenize.dataset.percentiles
    pct = {f"p{p}": int(ordered[min(n - 1, round(p / 100 * (n - 1)))]) for p in points} if n else {}
    return {
        "samples": n,
        "rejected": rejected,
        "truncated": truncated,
        "tokens": int(lengths.sum()),
        "trained_tokens": trained,
        "length_percentiles": pct,
    }


def tokenized_dataset(
    cfg: Any,
    tokenizer: Any,
    *,
    cache_dir: str | Path | None = None,
    num_proc: int | None = None,
    on_build: Any = None,
) -> TokenizedStore:
    """The training set of an sft config, tokenised into a memory-mapped store: what a trainer calls.

    `cfg` is a RunConfig (or its `data` section); `tokenizer` must already carry the chat template
    the run uses (lmtune.tokenize.templates.apply_template_choice). The first call for a given data
    content + tokenizer + template + max_length + train_on (+ mix, reading options) tokenises with
    `num_proc` workers (default data.num_proc, else `auto_num_proc`) into
    `<cache_dir or default_cache_dir()>/datasets/<key>/`; later calls, from any process, memory-map
    it in seconds.

    Distributed runs: call it on every rank. One rank builds (a file lock makes the others wait),
    then every rank memory-maps the same files; the OS shares their pages, and each rank reads only
    the rows its sampler (DistributedSampler / accelerate) hands it, so no rank copies the data.
    `.dataset` is a datasets.Dataset (input_ids, labels) that the HF Trainer takes directly;
    `.lengths` feeds packing (lmtune.datastore.packing) and statistics without reading a token.
    Validation: data.val_path is a second store (build_or_load); data.val_size splits the rows with
    lmtune.datastore.views.split_indices (the records split_records would pick) into two views.
    `lmtune train` goes through lmtune.train.sft_data.load_sft_data, which does both.
    """
    from lmtune.data.sources import training_specs
    from lmtune.tokenize.cache import default_cache_dir

    data = getattr(cfg, "data", cfg)
    task = getattr(cfg, "task", "sft")
    if task != "sft":
        raise ValueError(f"the tokenised store holds sft conversations; task is {task!r}")
    return build_or_load(
        training_specs(data, "sft"),
        tokenizer,
        cache_dir=cache_dir if cache_dir is not None else default_cache_dir(),
        max_length=data.max_length,
        train_on=data.train_on,
        template=data.template,
        on_error=data.on_error,
        mix=(data.mix, data.mix_stop, data.seed),
        num_proc=num_proc if num_proc is not None else getattr(data, "num_proc", None),
        on_build=on_build,
    )


@contextmanager
def _environ_kept() -> Iterator[None]:
    """`datasets.map(num_proc > 1)` leaves a deep copy in `os.environ` (datasets 4.x: `os.environ =
    prev_env`), so modules that bound the original object (rich's Console reads COLUMNS from it)
    stop seeing changes. Put the original object back, with whatever the copy holds."""
    original = os.environ
    try:
        yield
    finally:
        if os.environ is not original:
            current = dict(os.environ)
            for name in set(original) - set(current):
                del original[name]
            original.update(current)
            os.environ = original  # noqa: B003 (the same object, its contents already set)
