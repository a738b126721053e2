"""The tokenisation cache: a hit gives exactly what a fresh computation gives, anything that changes the
samples is a miss, and a broken or unwritable cache never stops a run."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest

from lmtune.data.load import load_conversations
from lmtune.data.records import Conversation
from lmtune.tokenize import cache
from lmtune.tokenize.cache import CacheWarning, default_cache_dir
from lmtune.tokenize.dataset import tokenize_records

KW = {"max_length": 256, "train_on": "all"}


@pytest.fixture(scope="module")
def records(shared_data) -> list[Conversation]:
    """120 Alpaca records and one that is rejected (its only answer has weight 0), so rejects are cached too."""
    recs = load_conversations(shared_data / "alpaca_en_stanford" / "alpaca_small.json", limit=120).records
    unused = Conversation.from_dict(
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hey", "weight": 0},
            ]
        },
        source="extra.jsonl#1",
    )
    return [*recs[:60], unused, *recs[60:]]


@pytest.fixture()
def tok(smollm2_tokenizer):
    return copy.deepcopy(smollm2_tokenizer)


@pytest.fixture(scope="module")
def fresh(records, smollm2_tokenizer):
    """The set computed without any cache: what every cached answer must equal."""
    return tokenize_records(records, copy.deepcopy(smollm2_tokenizer), **KW)


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "tokenized").iterdir())


def test_second_call_loads_the_same_set(records, tok, fresh, tmp_path):
    first = tokenize_records(records, tok, cache_dir=tmp_path, **KW)
    assert not first.cache_hit and first.cache_file is not None and first.cache_file.is_file()
    assert cache_files(tmp_path) == [first.cache_file]  # no temporary file left behind
    assert first.cache_file.name == f"{cache.cache_key(records, tok, **KW)}.npz"
    second = tokenize_records(records, tok, cache_dir=tmp_path, **KW)
    assert second.cache_hit and second.cache_file == first.cache_file
    assert second == fresh and first == fresh
    assert [r.to_dict() for r in second.rejects] == [r.to_dict() for r in fresh.rejects]
    assert second.rejects[0].reason == "no_trained_turn" and second.rejects[0].file == "extra.jsonl"
    assert len(second.samples) == len(records) - 1 and second.stats() == fresh.stats()


def test_sources_come_from_the_records_being_tokenised(records, tok, tmp_path):
    tokenize_records(records, tok, cache_dir=tmp_path, **KW)
    moved = [Conversation(c.messages, c.tools, source=c.source.replace("alpaca", "renamed")) for c in records]
    again = tokenize_records(moved, tok, cache_dir=tmp_path, **KW)
    assert again.cache_hit  # the content is the same...
    assert again.sources == [c.source for c in moved if c.source != "extra.jsonl#1"]  # ...the files are not
    assert all("renamed" in s for s in again.sources)


def _changed_record(records: list[Conversation]) -> list[Conversation]:
    changed = copy.deepcopy(records)
    changed[5].messages[-1].content += "!"
    return changed


def _with_tools(records: list[Conversation]) -> list[Conversation]:
    changed = copy.deepcopy(records)
    changed[5].tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    return changed


@pytest.mark.parametrize("change", ["record", "tools", "max_length", "train_on", "template", "vocabulary"])
def test_anything_that_changes_the_samples_is_a_miss(records, tok, tmp_path, change):
    tokenize_records(records, tok, cache_dir=tmp_path, **KW)
    recs, kw = records, dict(KW)
    if change == "record":
        recs = _changed_record(records)
    elif change == "tools":
        recs = _with_tools(records)
    elif change == "max_length":
        kw["max_length"] = 128
    elif change == "train_on":
        kw["train_on"] = "all_tokens"
    elif change == "template":
        tok.chat_template = tok.chat_template.replace("You are a helpful", "You are a kind")
    elif change == "vocabulary":
        tok.add_tokens(["<|lmtune_test|>"])
    again = tokenize_records(recs, tok, cache_dir=tmp_path, **kw)
    assert not again.cache_hit
    assert len(cache_files(tmp_path)) == 2
    assert again == tokenize_records(recs, tok, **kw)  # and it is the fresh result for the new inputs


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "other_key"])
def test_a_broken_cache_file_is_recomputed_with_a_warning(records, tok, fresh, tmp_path, damage):
    path = tokenize_records(records, tok, cache_dir=tmp_path, **KW).cache_file
    assert path is not None
    good = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not a cache file at all")
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a valid file of other records under this name
        other = tokenize_records(_changed_record(records), tok, cache_dir=tmp_path, **KW).cache_file
        assert other is not None
        path.write_bytes(other.read_bytes())
    with pytest.warns(CacheWarning, match="unreadable tokenisation cache file"):
        again = tokenize_records(records, tok, cache_dir=tmp_path, **KW)
    assert not again.cache_hit and again == fresh
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file loads cleanly
        assert tokenize_records(records, tok, cache_dir=tmp_path, **KW).cache_hit


def test_an_unwritable_cache_folder_only_warns(records, tok, fresh, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(CacheWarning, match="could not write the tokenisation cache"):
        out = tokenize_records(records, tok, cache_dir=blocker, **KW)
    assert out == fresh and not out.cache_hit


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LMTUNE_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("LMTUNE_CACHE")
    monkeypatch.delenv("LMTUNE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "lmtune"
