"""Tokenising labelled texts: the tokenizer's own single/pair encoding, truncation counted,
label ids, and dynamic padding in the collator."""

from __future__ import annotations

import pytest
from tests.classification_helpers import minilm_dir

from lmtune.data.classification import LabeledText
from lmtune.tokenize.classification import ListDataset, collator, tokenize_examples


@pytest.fixture(scope="module")
def bert_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def test_single_and_pair_encoding_match_the_tokenizer(bert_tokenizer):
    records = [
        LabeledText("A man sleeps.", "A man rests.", "yes", "x#1"),
        LabeledText("the film is fine", None, "no", "x#2"),
    ]
    out = tokenize_examples(records, bert_tokenizer, max_length=64, label2id={"no": 0, "yes": 1})
    pair = bert_tokenizer("A man sleeps.", "A man rests.")
    single = bert_tokenizer("the film is fine")
    assert out.samples[0]["input_ids"] == pair["input_ids"]
    assert out.samples[0]["token_type_ids"] == pair["token_type_ids"] and 1 in pair["token_type_ids"]
    assert out.samples[1]["input_ids"] == single["input_ids"]
    assert [s["labels"] for s in out.samples] == [1, 0]
    assert out.sources == ["x#1", "x#2"] and out.truncated == 0
    ids = out.samples[1]["input_ids"]
    assert bert_tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "the", "film", "is", "fine", "[SEP]"]


def test_truncation_is_counted(bert_tokenizer):
    long = " ".join(["word"] * 50)
    out = tokenize_examples(
        [LabeledText(long, None, "a", "x#1"), LabeledText("short", None, "a", "x#2")],
        bert_tokenizer,
        max_length=16,
        label2id={"a": 0},
    )
    assert (
        len(out.samples[0]["input_ids"]) == 16
        and out.samples[0]["input_ids"][-1] == bert_tokenizer.sep_token_id
    )
    assert out.truncated == 1
    assert out.stats()["length_percentiles"]["p100"] == 16


def test_without_label2id_there_are_no_labels(bert_tokenizer):
    out = tokenize_examples([LabeledText("hi", None, None, "x#1")], bert_tokenizer, max_length=8)
    assert "labels" not in out.samples[0]


def test_collator_pads_to_the_longest_in_the_batch(bert_tokenizer):
    records = [LabeledText("a", None, "0", "x#1"), LabeledText("a b c d e", None, "1", "x#2")]
    samples = ListDataset(
        tokenize_examples(records, bert_tokenizer, max_length=64, label2id={"0": 0, "1": 1}).samples
    )
    batch = collator(bert_tokenizer)([samples[0], samples[1]])
    assert batch["input_ids"].shape == (2, 7)  # [CLS] a b c d e [SEP], not max_length
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0], [1] * 7]
    assert batch["input_ids"][0, 3:].tolist() == [bert_tokenizer.pad_token_id] * 4
    assert batch["labels"].tolist() == [0, 1]
