"""SFT reads its samples from the memory-mapped store: what a run trains on (samples, packed rows,
batches, validation split, statistics, rejects) equals the in-memory list path on the same data,
and under a 2-process launch each rank reads only its own rows."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmtune.config.schema import RunConfig
from lmtune.data.load import load_conversations
from lmtune.data.sources import load_sources
from lmtune.data.split import split_records
from lmtune.datastore.views import split_indices
from lmtune.tokenize.dataset import PadCollator, tokenize_records
from lmtune.tokenize.packing import PackedCollator
from lmtune.train.lm_trainer import lm_rows, lm_samples
from lmtune.train.sft_data import load_sft_data

MAX = 96


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, shared_data) -> Path:
    """60 Alpaca records, some with a system message, a bad JSON line (read reject) and two
    records with nothing trained (masking rejects), so both kinds of rejects land in both parts."""
    rows = json.loads((shared_data / "alpaca_en_stanford" / "alpaca_small.json").read_text())[:60]
    lines = []
    for i, r in enumerate(rows):
        if i % 7 == 3:
            r = {**r, "system": "Answer briefly."}
        lines.append(json.dumps(r))
        if i in (25, 40):
            zero = {"role": "assistant", "content": "Hey", "weight": 0}
            lines.append(json.dumps({"messages": [{"role": "user", "content": "Hi"}, zero]}))
        if i == 30:
            lines.append("{not json")
    p = tmp_path_factory.mktemp("sftstore") / "alpaca.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def session(tmp_path: Path, data: dict) -> SimpleNamespace:
    """What load_sft_data uses of a Session: the config, a console, the rejects path, main_first."""
    printed: list[str] = []
    cfg = RunConfig.model_validate({"model": {"name": "x"}, "data": {"max_length": MAX, **data}})
    return SimpleNamespace(
        cfg=cfg,
        console=SimpleNamespace(print=lambda text, **_: printed.append(text)),
        run=SimpleNamespace(rejects=tmp_path / "rejects.jsonl"),
        main_first=lambda fn: fn(),
        printed=printed,
    )


def in_memory(cfg: RunConfig, tokenizer):
    """The list path sft used so far: load_sources (+ split_records or the val file) + tokenize_records."""
    d = cfg.data
    sources = load_sources(d, "sft")
    train, val, rejects = sources.records, [], list(sources.rejects)
    if d.val_path:
        loaded = load_conversations(d.val_path)
        val, rejects = loaded.records, rejects + loaded.rejects
    elif d.val_size:
        train, val, _ = split_records(train, val_size=d.val_size, seed=d.seed)
    kw = {"max_length": MAX, "train_on": d.train_on}
    t, v = tokenize_records(train, tokenizer, **kw), tokenize_records(val, tokenizer, **kw)
    return t, v, rejects + t.rejects + v.rejects


def reject_rows(rejects):
    return [(r.file, r.record, r.line, r.field, r.reason, r.message, r.raw) for r in rejects]


@pytest.mark.parametrize("split", ["val_size", "val_path"])
def test_store_path_equals_the_list_path(split, data_file, smollm2_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("LMTUNE_CACHE", str(tmp_path / "cache"))  # a cold first call
    tok = copy.deepcopy(smollm2_tokenizer)
    opts = (
        {"val_size": 0.2, "seed": 3} if split == "val_size" else {"val_path": str(data_file), "val_size": 0}
    )
    s = session(tmp_path, {"path": str(data_file), **opts})
    got = load_sft_data(s, tok)
    ref_train, ref_val, ref_rejects = in_memory(s.cfg, copy.deepcopy(smollm2_tokenizer))

    for view_, ref in ((got.train, ref_train), (got.val, ref_val)):
        assert len(view_) == len(ref.samples) > 5
        assert [view_[i] for i in range(len(view_))] == [
            {"input_ids": x.input_ids, "labels": x.labels} for x in ref.samples
        ]
        assert view_.stats() == ref.stats()
        assert view_.lengths.tolist() == [len(x.input_ids) for x in ref.samples]
    assert reject_rows(got.rejects) == reject_rows(ref_rejects)
    assert {r.reason for r in got.rejects} >= {"invalid_json", "no_trained_tokens"}
    assert ref_train.stats()["rejected"] + ref_val.stats()["rejected"] >= 2
    assert got.info == {"task": "sft", "train_file": str(data_file), "format": "alpaca", "records_read": 63}

    # Batches as the Trainer builds them: packed rows and padded samples, store vs lists.
    for packed_store, packed_list in zip(
        (lm_rows(got.train, 128), lm_rows(got.val, 128)),
        (lm_rows(ref_train.samples, 128), lm_rows(ref_val.samples, 128)),
    ):
        assert len(packed_store) == len(packed_list) and packed_store.stats() == packed_list.stats()
        rows = list(range(len(packed_list)))
        collate = PackedCollator(0, pad_to=128)
        a = collate([packed_store[i] for i in rows])
        b = collate([packed_list[i] for i in rows])
        assert all(torch.equal(a[k], b[k]) for k in b)
    collate = PadCollator(0)
    a = collate([lm_samples(got.train)[i] for i in range(8)])
    b = collate([lm_samples(ref_train.samples)[i] for i in range(8)])
    assert all(torch.equal(a[k], b[k]) for k in b)

    # The second run reuses the store and says so; the system-role note was decided on a record.
    again = session(tmp_path, {"path": str(data_file), **opts})
    hit = load_sft_data(again, copy.deepcopy(smollm2_tokenizer))
    assert hit.store.hit and hit.store.path == got.store.path and not got.store.hit
    assert any(str(got.store.path) in line and "reused from the cache" in line for line in again.printed)
    assert got.store.meta["first_system"]["source"] == "alpaca.jsonl#4"


def test_split_indices_equal_split_records():
    for n, size, seed in ((10, 2, 42), (25, 0.2, 1), (1000, 0.1, 7), (7, 1, 0), (100, 0.5, 3)):
        train, val, _ = split_records(list(range(n)), val_size=size, seed=seed)
        a, b = split_indices(n, val_size=size, seed=seed)
        assert (a.tolist(), b.tolist()) == (train, val)


class CountingTable:
    """A store table that records which rows are read (to prove who reads what)."""

    def __init__(self, table):
        self.table, self.read = table, []

    def __getitem__(self, key):
        self.read += [key] if isinstance(key, int) else list(key)
        return self.table[key]


def test_each_rank_reads_only_its_shard(data_file, smollm2_tokenizer, tmp_path):
    """The Trainer's DataLoader as accelerate shards it for 2 processes: building the view and the
    packing plan reads no row; each rank then reads only its own rows, and the two cover the set."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    s = session(tmp_path, {"path": str(data_file), "val_size": 0})
    got = load_sft_data(s, copy.deepcopy(smollm2_tokenizer))
    seen = []
    for rank in range(2):
        samples = copy.copy(got.train)
        samples.table = CountingTable(got.train.table)
        packed = lm_rows(samples, 128)
        assert samples.table.read == []  # the plan came from the lengths alone
        loader = DataLoader(packed, batch_size=2, shuffle=False, collate_fn=PackedCollator(0))
        for _ in prepare_data_loader(loader, num_processes=2, process_index=rank, put_on_device=False):
            pass
        seen.append(samples.table.read)
    rows = np.asarray(got.train.index)
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(rows.tolist())  # every sample read once, by one rank
    assert 0.3 < len(seen[0]) / len(rows) < 0.7


def test_no_cache_builds_in_a_private_folder(data_file, smollm2_tokenizer, tmp_path, monkeypatch):
    """data.cache: false: a build in a temporary folder of its own, never the shared cache."""
    monkeypatch.setenv("LMTUNE_CACHE", str(tmp_path / "cache"))
    s = session(tmp_path, {"path": str(data_file), "val_size": 0, "cache": False})
    got = load_sft_data(s, copy.deepcopy(smollm2_tokenizer))
    assert not got.store.hit and not (tmp_path / "cache").exists()
    assert got.store.path.parent.parent.name.startswith("lmtune-sft-")
