"""Documents -> token stream -> blocks: the blocks are exactly the framed documents, cut evenly."""

from __future__ import annotations

import pytest

from lmtune.tokenize.blocks import MIN_LAST_BLOCK, build_blocks, cut_blocks, separators
from lmtune.tokenize.dataset import PadCollator, SampleDataset
from lmtune.tokenize.masking import IGNORE

DOCS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "Ünïcödé text, emoji 🙂 and numbers 1234567.",
    "short",
    "A longer document that runs on. " * 40,
]


def independent_stream(tokenizer, docs) -> list[int]:
    """What the stream must be: each document as the tokenizer frames it itself, then eos."""
    return [t for d in docs for t in [*tokenizer(d)["input_ids"], tokenizer.eos_token_id]]


@pytest.mark.parametrize("max_length", [8, 37, 64, 4096])
def test_blocks_reproduce_the_stream_and_are_full(smollm2_tokenizer, max_length):
    expected = independent_stream(smollm2_tokenizer, DOCS)
    blocks = build_blocks(DOCS, smollm2_tokenizer, max_length=max_length)
    ids = [s.input_ids for s in blocks.samples]
    assert [t for b in ids for t in b] == expected
    assert all(len(b) == max_length for b in ids[:-1])
    assert MIN_LAST_BLOCK <= len(ids[-1]) <= max_length
    assert all(s.labels == s.input_ids and s.labels is not s.input_ids for s in blocks.samples)
    assert len(ids) == -(-len(expected) // max_length)
    stats = blocks.stats()
    assert stats["documents"] == len(DOCS) and stats["tokens"] == len(expected)
    assert stats["blocks"] == len(ids) and stats["dropped_tokens"] == 0


def test_smollm2_documents_end_with_eos_and_get_no_bos(smollm2_tokenizer):
    """SmolLM2's tokenizer adds nothing in front of text, so neither do we; eos ends each document."""
    assert separators(smollm2_tokenizer) == ([], [smollm2_tokenizer.eos_token_id])
    blocks = build_blocks(DOCS[:2], smollm2_tokenizer, max_length=4096)
    ids = blocks.samples[0].input_ids
    assert ids.count(smollm2_tokenizer.eos_token_id) == 2 and ids[-1] == smollm2_tokenizer.eos_token_id
    assert blocks.stats()["separators"] == {"before": [], "after": [smollm2_tokenizer.eos_token]}


def test_a_tokenizer_that_adds_bos_frames_every_document(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir, add_bos_token=True)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert tok("x")["input_ids"][0] == bos  # the premise: this tokenizer puts bos in front itself
    assert separators(tok) == ([bos], [eos])
    blocks = build_blocks(DOCS, tok, max_length=16)
    stream = [t for s in blocks.samples for t in s.input_ids]
    expected = [t for d in DOCS for t in [bos, *tok(d, add_special_tokens=False)["input_ids"], eos]]
    assert stream == expected
    assert stream.count(bos) == len(DOCS)


def test_a_tokenizer_that_adds_eos_itself_does_not_get_two(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    tok.add_eos_token = True
    assert tok("x")["input_ids"][-1] == tok.eos_token_id
    stream = [t for s in build_blocks(DOCS, tok, max_length=4096).samples for t in s.input_ids]
    assert stream.count(tok.eos_token_id) == len(DOCS)


def test_last_block_rule():
    stream = list(range(10))
    assert cut_blocks(stream, 5) == ([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], 0)
    assert cut_blocks(stream, 4) == ([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]], 0)
    assert cut_blocks(stream, 3) == ([[0, 1, 2], [3, 4, 5], [6, 7, 8]], 1)  # [9] alone trains nothing
    assert cut_blocks(stream, 100) == ([stream], 0)
    assert cut_blocks([7], 8) == ([], 1)
    assert cut_blocks([], 8) == ([], 0)


def test_dropped_token_is_counted(smollm2_tokenizer):
    n = len(independent_stream(smollm2_tokenizer, DOCS))
    blocks = build_blocks(DOCS, smollm2_tokenizer, max_length=n - 1)
    assert len(blocks.samples) == 1 and blocks.stats()["dropped_tokens"] == 1
    assert blocks.stats()["tokens"] == n


def test_no_too_long_warning_for_long_documents(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    tok.model_max_length = 64  # so a long document would trip the "sequence length is longer" warning
    key = "sequence-length-is-longer-than-the-specified-maximum"
    build_blocks(["word " * 5000], tok, max_length=64)
    assert not tok.deprecation_warnings.get(key)
    tok("word " * 5000)  # the check itself can fail: plain tokenisation does set it
    assert tok.deprecation_warnings.get(key)


def test_blocks_feed_the_sample_dataset_and_collator(smollm2_tokenizer):
    blocks = build_blocks(DOCS, smollm2_tokenizer, max_length=32)
    ds = SampleDataset(blocks.samples)
    batch = PadCollator(pad_token_id=0)([ds[0], ds[len(ds) - 1]])
    last = blocks.samples[-1].input_ids
    assert len(last) < 32  # so the padding below is really checked
    assert batch["input_ids"].shape == (2, 32)
    assert batch["input_ids"][0].tolist() == blocks.samples[0].input_ids
    assert batch["labels"][1, : len(last)].tolist() == last
    assert (batch["labels"][1, len(last) :] == IGNORE).all()
    assert batch["attention_mask"][1].sum().item() == len(last)
