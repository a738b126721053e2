"""The memory-mapped store: equal to the in-memory path, keyed on everything that decides it, reused
without tokenising, built once by concurrent processes."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmtune.config.schema import RunConfig
from lmtune.data.load import load_conversations
from lmtune.data.records import count_reasons
from lmtune.data.sources import SourceSpec, load_sources
from lmtune.datastore import store as store_mod
from lmtune.datastore.key import store_key
from lmtune.datastore.packing import StorePackedDataset
from lmtune.datastore.store import build_or_load, tokenized_dataset
from lmtune.datastore.views import view
from lmtune.tokenize.dataset import tokenize_records
from lmtune.tokenize.packing import pack_samples, packing_stats

KW = {"max_length": 96, "train_on": "all"}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, shared_data) -> Path:
    """150 Alpaca records, a bad JSON line (read reject) and a record with nothing trained
    (masking reject), so both kinds of rejects are stored."""
    rows = json.loads((shared_data / "alpaca_en_stanford" / "alpaca_small.json").read_text())[:150]
    lines = [json.dumps(r) for r in rows[:70]]
    lines.append("{not json")
    lines.append(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                          {"role": "assistant", "content": "Hey", "weight": 0}]}))  # fmt: skip
    lines += [json.dumps(r) for r in rows[70:]]
    p = tmp_path_factory.mktemp("store") / "alpaca.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def reference(data_file, smollm2_tokenizer):
    """The in-memory path (load_conversations + tokenize_records): what the store must equal."""
    loaded = load_conversations(data_file)
    return loaded, tokenize_records(loaded.records, copy.deepcopy(smollm2_tokenizer), **KW)


@pytest.fixture(scope="module")
def built(data_file, smollm2_tokenizer, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    builds: list[str] = []
    environ = os.environ
    st = build_or_load([SourceSpec(str(data_file), data_file.name)], copy.deepcopy(smollm2_tokenizer),
                       cache_dir=cache, num_proc=2, on_build=builds.append, **KW)  # fmt: skip
    # datasets.map(num_proc=2) swaps os.environ for a copy; the store puts the original back, or rich
    # (and anything else that bound it) would stop seeing environment changes
    assert os.environ is environ
    return st, cache, builds


def test_store_equals_the_in_memory_path(built, reference):
    st, _, builds = built
    loaded, tokset = reference
    assert not st.hit and len(builds) == 1 and st.meta["num_proc"] == 2
    assert len(st.dataset) == len(tokset.samples) > 100
    for i, s in enumerate(tokset.samples):
        row = st.dataset[i]
        assert row["input_ids"] == s.input_ids and row["labels"] == s.labels
    assert st.sources["source"] == tokset.sources
    assert st.lengths.tolist() == [len(s.input_ids) for s in tokset.samples]
    rejects = loaded.rejects + tokset.rejects
    assert st.stats == {**tokset.stats(), "rejected": len(rejects)}
    stored = list(st.rejects())
    assert [(r.file, r.record, r.line, r.reason) for r in stored] == [
        (r.file, r.record, r.line, r.reason) for r in rejects
    ]
    assert st.meta["rejected_by_reason"] == count_reasons(rejects)
    assert {"invalid_json", "missing_field", "no_trained_tokens"} <= set(count_reasons(rejects))
    assert sorted(p.name for p in st.path.parent.iterdir() if not p.name.endswith(".lock")) == [st.path.name]


def test_second_call_reuses_the_store_without_tokenising(built, data_file, smollm2_tokenizer, monkeypatch):
    st, cache, builds = built
    calls = []
    monkeypatch.setattr(store_mod, "tokenize_conversations", lambda *a, **k: calls.append(1))
    again = build_or_load([SourceSpec(str(data_file), data_file.name)], copy.deepcopy(smollm2_tokenizer),
                          cache_dir=cache, on_build=builds.append, **KW)  # fmt: skip
    assert again.hit and again.path == st.path and len(builds) == 1 and not calls
    assert again.dataset[-1] == st.dataset[-1]


def test_every_setting_changes_the_key(data_file, smollm2_tokenizer, tmp_path):
    tok = copy.deepcopy(smollm2_tokenizer)
    spec = SourceSpec(str(data_file), data_file.name)
    base = store_key([spec], tok, **KW)
    assert store_key([spec], copy.deepcopy(smollm2_tokenizer), **KW) == base
    other_tok = copy.deepcopy(smollm2_tokenizer)
    other_tok.chat_template = tok.chat_template.replace("<|im_start|>", "<|im_start|> ")
    edited = tmp_path / data_file.name
    edited.write_bytes(data_file.read_bytes().replace(b"Give", b"give", 1))
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_bytes(data_file.read_bytes())
    two = [spec, SourceSpec(str(renamed), renamed.name)]
    keys = [
        base,
        store_key([spec], tok, max_length=97, train_on="all"),
        store_key([spec], tok, max_length=96, train_on="last"),
        store_key([spec], tok, template="chatml", **KW),
        store_key([spec], other_tok, **KW),
        store_key([SourceSpec(str(edited), edited.name)], tok, **KW),
        store_key([SourceSpec(str(renamed), renamed.name)], tok, **KW),
        store_key([SourceSpec(str(data_file), data_file.name, format="openai")], tok, **KW),
        store_key([SourceSpec(str(data_file), data_file.name, columns={"output": "x"})], tok, **KW),
        store_key([SourceSpec(str(data_file), data_file.name, system="Be brief.")], tok, **KW),
        store_key([SourceSpec(str(data_file), data_file.name, limit=10)], tok, **KW),
        store_key([SourceSpec(str(data_file), data_file.name, weight=2.0)], tok, **KW),
        store_key([spec], tok, on_error="fail", **KW),
        store_key(two, tok, **KW),
        store_key(two, tok, mix=("concat", "first_exhausted", 7), **KW),
        store_key(two, tok, mix=("interleave", "first_exhausted", 42), **KW),
    ]
    assert len(set(keys)) == len(keys)


def test_packed_rows_equal_pack_samples(built, reference):
    st, _, _ = built
    _, tokset = reference
    packed = StorePackedDataset(view(st), 128, cache=st.path)
    rows = pack_samples(tokset.samples, 128)
    assert len(packed) == len(rows) and packed.stats() == packing_stats(rows, 128)
    for i, r in enumerate(rows):
        assert packed[i] == {"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids}
    assert len(list(st.path.glob("packed-128-*.npz"))) == 1
    again = StorePackedDataset(view(st), 128, cache=st.path)
    assert again.members.tolist() == packed.members.tolist()


def test_tokenized_dataset_from_a_config_with_two_mixed_files(data_file, smollm2_tokenizer, tmp_path):
    second = tmp_path / "second.jsonl"
    second.write_text(
        "\n".join(json.dumps({"prompt": f"Q{i}", "completion": f"A{i}"}) for i in range(5)) + "\n"
    )
    cfg = RunConfig.model_validate(
        {
            "model": {"name": "x"},
            "data": {"datasets": [{"path": str(data_file)}, {"path": str(second), "weight": 2.0}],
                     "max_length": 96, "num_proc": 1},
        }
    )  # fmt: skip
    st = tokenized_dataset(cfg, copy.deepcopy(smollm2_tokenizer), cache_dir=tmp_path / "c")
    tok = copy.deepcopy(smollm2_tokenizer)
    sources = load_sources(cfg.data, "sft")
    ref = tokenize_records(sources.records, tok, **KW)  # the in-memory mix
    assert st.sources["source"] == ref.sources and st.sources["source"][-1] == "second.jsonl#5"
    assert st.dataset["input_ids"] == [x.input_ids for x in ref.samples]
    assert [d["used"] for d in st.meta["per_dataset"]] == [d["used"] for d in sources.per_dataset]
    assert st.meta["per_dataset"][1]["used"] == 10  # weight 2: every record twice


BUILD = """
import json, os, sys, time
from pathlib import Path
from transformers import AutoTokenizer
from lmtune.data.sources import SourceSpec
from lmtune.datastore.store import build_or_load
tok = AutoTokenizer.from_pretrained(sys.argv[1])
cache = Path(sys.argv[3])
(cache / f"ready-{os.getpid()}").touch()
while len(list(cache.glob("ready-*"))) < 2:  # a barrier: both processes ask at the same moment
    time.sleep(0.05)
built = []
def building(key):  # hold the lock a while, so the other process must wait on it
    built.append(key)
    time.sleep(2)
st = build_or_load([SourceSpec(sys.argv[2], "alpaca.jsonl")], tok, cache_dir=cache, max_length=96,
                   train_on="all", num_proc=1, on_build=building)
print(json.dumps({"built": len(built), "path": str(st.path), "ids": st.dataset[len(st.dataset) - 1]["input_ids"]}))
"""


def test_two_processes_build_once_and_share_the_store(data_file, smollm2_tokenizer_dir, tmp_path):
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    cmd = [sys.executable, "-c", BUILD, str(smollm2_tokenizer_dir), str(data_file), str(cache)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(o["built"] for o in outs) == [0, 1]
    assert outs[0]["path"] == outs[1]["path"] and outs[0]["ids"] == outs[1]["ids"]
    left = [p.name for p in (cache / "datasets").iterdir() if not p.name.endswith(".lock")]
    assert left == [Path(outs[0]["path"]).name]  # no temporary folder left behind
