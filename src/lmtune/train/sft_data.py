"""SFT data for a run, from the memory-mapped store (lmtune.datastore): read, tokenised and masked
once per data + tokenizer + settings, then memory-mapped by this and every later run.

Why here and not Session.load_data: that one returns lists of records, which a set of millions of
conversations cannot afford; this returns views (lmtune.datastore.views.StoreSamples) that hold
row numbers and lengths only. It says and writes what the list path did: the per-file lines, the
skipped-records line, the validation split (the same seeded rule, so the same records), the
system-role note, the rejects (each with its record) and the statistics.

data.cache: false builds the store in a temporary folder removed when the process exits, so no
tokenised data outlives the run (one build per rank under a distributed launch).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from lmtune.data.records import Conversation, Reject, count_reasons
from lmtune.errors import DataError


@dataclass
class SftData:
    train: Any  # StoreSamples
    val: Any  # StoreSamples (empty when there is no validation data)
    rejects: list[Reject]  # reading rejects (train files, then the validation file), then masking ones
    info: dict[str, Any]  # data_stats.json, before the tokenised statistics are added
    store: Any  # the training TokenizedStore


PREFLIGHT_RECORDS = 64


def check_sources(cfg: Any) -> None:
    """Before any tokenizer or model loads: every data file exists, reads and holds this task's data
    (its first records read, detected, converted and validated as the store will). A broken or
    wrong file is then the same one-line DataError the full read would raise, without first waiting
    for the model; the store still reads everything, and a bad record further in is skipped as
    before. sft and pretrain call it."""
    from lmtune.data.sources import SourceSpec, training_specs
    from lmtune.datastore.stream import RejectSink, StreamStats, stream_conversations
    from lmtune.datastore.text_store import stream_documents

    d = cfg.data
    specs = training_specs(d, cfg.task)
    if d.val_path:
        specs.append(
            SourceSpec(d.val_path, Path(d.val_path).name, d.format, dict(d.columns), dict(d.roles), d.system)
        )
    for spec in specs:
        if cfg.task == "pretrain":
            stats = StreamStats(str(spec.path))
            records = stream_documents(
                spec, on_error=d.on_error, text_split=d.text_split, sink=RejectSink(), stats=stats
            )
        else:
            records = stream_conversations(spec, on_error=d.on_error, sink=RejectSink())
        for _ in islice(records, PREFLIGHT_RECORDS):
            pass


def load_sft_data(s: Any, tokenizer: Any) -> SftData:
    """The training and validation samples of `s.cfg` (a Session), built or memory-mapped."""
    from lmtune.data.sources import SourceSpec
    from lmtune.datastore.store import build_or_load, tokenized_dataset
    from lmtune.datastore.views import part_rejects, split_indices, store_rejects, view
    from lmtune.tokenize.cache import default_cache_dir

    cfg, d = s.cfg, s.cfg.data
    cache_dir = default_cache_dir() if d.cache else _scratch_dir()
    val_spec = None
    if d.val_path:
        val_spec = SourceSpec(
            d.val_path, Path(d.val_path).name, d.format, dict(d.columns), dict(d.roles), d.system
        )

    def build() -> tuple[Any, Any]:
        train_st = tokenized_dataset(cfg, tokenizer, cache_dir=cache_dir)
        val_st = None
        if val_spec is not None:
            val_st = build_or_load(
                [val_spec],
                tokenizer,
                cache_dir=cache_dir,
                max_length=d.max_length,
                train_on=d.train_on,
                template=d.template,
                on_error=d.on_error,
                num_proc=d.num_proc,
            )
        return train_st, val_st

    # Under a multi-process launch rank 0 builds the store first; the others memory-map it.
    st, val_st = s.main_first(build)
    per = st.meta["per_dataset"]
    for row in per:
        s.console.print(
            f"Read {row['name']}: {row['format']} format, {row['usable']} of {row['read']} records usable"
            + (f", {row['used']} used in the mix" if len(per) > 1 else "")
        )
    read_rejects, masking = store_rejects(st)
    if read_rejects:
        counts = ", ".join(f"{n} {r}" for r, n in count_reasons(read_rejects).items())
        s.console.print(
            f"[yellow]{len(read_rejects)} of {st.meta['records_read']} records skipped: {counts} "
            f"(see {s.run.rejects})[/]"
        )
    rows = st.meta["rows"]
    if val_st is not None:
        val_read, val_masking = store_rejects(val_st)
        train, val = view(st), view(val_st)
        s.console.print(
            f"Validation file {d.val_path}: {val_st.meta['rows']} of {val_st.meta['records_read']} records usable"
        )
        rejects = read_rejects + val_read + masking + val_masking
    elif d.val_size:
        size = int(d.val_size) if d.val_size >= 1 else d.val_size
        train_rows, val_rows = split_indices(rows, val_size=size, seed=d.seed)
        train, val = view(st, train_rows), view(st, val_rows)
        s.console.print(f"Validation split: {len(val_rows)} of {rows} records")
        rejects = read_rejects + part_rejects(st, masking, train) + part_rejects(st, masking, val)
    else:
        train, val = view(st), view(st, [])
        rejects = read_rejects + masking
    _raise_if_template_fails_everywhere(st, masking)
    if val_st is not None:
        _raise_if_template_fails_everywhere(val_st, val_masking)
    first = st.meta.get("first_system")
    if first is not None:
        from lmtune.tokenize.templates import check_system_role

        note = check_system_role(
            tokenizer, [Conversation.from_dict(first["conv"], first["source"])], d.system_merge
        )
        if note:
            s.console.print(note, highlight=False)
    if st.hit:
        s.console.print(f"Tokenised samples reused from the cache: {st.path}")
    return SftData(train, val, rejects, store_info(cfg, st), st)


def store_info(cfg: Any, st: Any) -> dict[str, Any]:
    """data_stats.json's description of the data a store was built from (SFT and pretraining)."""
    d, per = cfg.data, st.meta["per_dataset"]
    formats = list(dict.fromkeys(row["format"] for row in per))
    info = {
        "task": cfg.task,
        "train_file": d.path if d.path else [row["path"] for row in per],
        "format": formats[0] if len(formats) == 1 else formats,
        "records_read": st.meta["records_read"],
    }
    if len(per) > 1 or d.datasets:
        info["datasets"] = per
        info["mix"] = d.mix
    return info


def _raise_if_template_fails_everywhere(st: Any, masking: list[Reject]) -> None:
    """One clear error instead of a reject per record when the chat template raises on every record
    (the rule of lmtune.tokenize.dataset.raise_if_template_fails_everywhere)."""
    rows = st.meta["rows"]
    if rows > 1 and st.meta["rejected_by_reason"].get("template_error", 0) == rows and masking:
        raise DataError(
            f"the chat template fails on every one of the {rows} records; the first: {masking[0].message}",
            file=masking[0].file or None,
        )


def _scratch_dir() -> Path:
    """data.cache: false: a private cache folder, removed when this process ends."""
    path = Path(tempfile.mkdtemp(prefix="lmtune-sft-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
