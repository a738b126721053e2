"""tokenize_records: every record ends up as a sample (with its source) or a reject (with why)."""

from __future__ import annotations

import copy

import pytest

from lmtune.data.records import Conversation
from lmtune.tokenize.dataset import TokenizedSet, tokenize_records
from lmtune.tokenize.masking import IGNORE, tokenize_conversation


def conv(i: int, answer: str = "ok", weight: float | None = None, user: str | None = None) -> Conversation:
    assistant = {"role": "assistant", "content": answer, **({"weight": weight} if weight is not None else {})}
    messages = [{"role": "user", "content": user or f"Question {i}?"}, assistant]
    return Conversation.from_dict({"messages": messages}, source=f"data/train.jsonl#{i}")


@pytest.fixture()
def tok(smollm2_tokenizer):
    return copy.deepcopy(smollm2_tokenizer)


def test_samples_and_rejects_keep_their_records_place_and_source(tok):
    records = [
        conv(1, "One."),
        conv(2, "Two.", weight=0),  # nothing to train
        conv(3, "Three."),
        conv(4, "Four.", user="word " * 300),  # the answer is cut off at max_length
        conv(5, "Five."),
    ]
    out = tokenize_records(records, tok, max_length=64, train_on="all")
    assert out.sources == ["data/train.jsonl#1", "data/train.jsonl#3", "data/train.jsonl#5"]
    assert [(r.file, r.record, r.reason) for r in out.rejects] == [
        ("data/train.jsonl", 2, "no_trained_turn"),
        ("data/train.jsonl", 4, "no_trained_tokens"),
    ]
    assert out.rejects[1].raw == records[3].to_dict() and "max_length=64" in out.rejects[1].message
    for rec, sample in zip([records[0], records[2], records[4]], out.samples):
        expected = tokenize_conversation(tok, [m.to_dict() for m in rec.messages], max_length=64)
        assert sample == expected
        answer = rec.messages[1].content
        assert tok.decode([t for t, lab in zip(sample.input_ids, sample.labels) if lab != IGNORE]).startswith(
            answer
        )
    stats = out.stats()
    assert (stats["samples"], stats["rejected"], stats["truncated"]) == (3, 2, 0)
    assert out.cache_file is None and not out.cache_hit


def test_no_records_is_an_empty_set(tok, tmp_path):
    assert tokenize_records([], tok, max_length=64, train_on="all", cache_dir=tmp_path) == TokenizedSet()
    assert not (tmp_path / "tokenized").exists()
