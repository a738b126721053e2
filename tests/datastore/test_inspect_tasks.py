"""`lmtune data inspect` for every task, on the real files in ../shared/data: the task is detected,
and what is reported equals an independent computation (the csv module's label counts, TRL's DPO
trainer's own tokenised rows, `build_blocks` on the whole file), with header-less CSV/TSV files
recognised and mapped by position."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from lmtune.data.classification import detect_columns, load_examples
from lmtune.data.readers import iter_raw_records
from lmtune.data.text import load_texts
from lmtune.datastore.inspect_classification import inspect_classification
from lmtune.datastore.inspect_preference import inspect_preference
from lmtune.datastore.inspect_tasks import check_column_names, detect_task
from lmtune.datastore.inspect_text import block_counts, inspect_text
from lmtune.errors import DataError
from lmtune.tokenize.blocks import build_blocks, cut_blocks

REAL = [
    ("torchtune_tiny_assets/hh_rlhf_tiny.json", "preference"),  # Anthropic HH-RLHF shape
    ("torchtune_tiny_assets/stack_exchange_paired_tiny.json", "preference"),
    ("llamafactory/dpo_en_demo.json", "preference"),  # the ranking shape MedicalGPT's dpo_zh uses
    ("llamafactory/kto_en_demo.json", "preference"),
    ("dpo_openai_orca_msfoundry/validation.jsonl", "preference"),
    ("llamafactory/c4_demo.jsonl", "pretrain"),
    ("pretrain_tinyshakespeare/input.txt", "pretrain"),
    ("cls_sst2/dev.tsv", "classification"),
    ("cls_sst2/train.head2000.tsv", "classification"),
    ("alpaca_en_stanford/alpaca_tiny.json", "sft"),
    ("dolly_15k/databricks-dolly-15k.head34.jsonl", "sft"),
    ("sharegpt_fastchat/dummy_conversation.json", "sft"),
    ("llamafactory/glaive_toolcall_en_demo.json", "sft"),
]


def without_header(src: Path, out: Path) -> Path:
    """The real SST-2 rows with the header line removed (bytes of the rows unchanged, CRLF kept)."""
    out.write_bytes(src.read_bytes().split(b"\n", 1)[1])
    return out


def tsv_labels(path: Path, column: int, *, skip_header: bool) -> Counter[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return Counter(r[column] for r in rows[1 if skip_header else 0 :] if r)


@pytest.mark.parametrize(("name", "task"), REAL, ids=[n for n, _ in REAL])
def test_the_task_of_every_real_file_is_detected(shared_data, name, task):
    assert detect_task(shared_data / name)[0] == task


def test_header_less_files_are_detected_both_ways(shared_data, tmp_path):
    dev = shared_data / "cls_sst2" / "dev.tsv"
    with_header = detect_columns(list(iter_raw_records(dev)), None, file=str(dev))
    assert not with_header.headerless and (with_header.label, with_header.text) == ("label", "content")
    # the same rows without their header (CRLF train rows too): the first row is data, read by position
    for src in (dev, shared_data / "cls_sst2" / "train.head2000.tsv"):
        bare = without_header(src, tmp_path / src.name)
        mapping = detect_columns(list(iter_raw_records(bare)), None, file=str(bare))
        assert mapping.headerless and (mapping.label, mapping.text) == ("0", "1")
        assert detect_task(bare) == ("classification", "a text column and a label column, no header row")
    # a header of usual names over rows of data stays a header, with text labels as well
    named = tmp_path / "named.csv"
    named.write_text("sentiment,review\npositive,great film\nnegative,dull and long\npositive,loved it\n")
    mapping = detect_columns(list(iter_raw_records(named)), None, file=str(named))
    assert not mapping.headerless and (mapping.label, mapping.text) == ("sentiment", "review")
    spam = tmp_path / "spam.tsv"  # SMS-spam shape: label<TAB>text, no header, text labels
    spam.write_text("ham\tsee you at 5\nspam\tWIN a prize now, call 0800\nham\tok thanks\nham\tlunch?\n")
    mapping = detect_columns(list(iter_raw_records(spam)), None, file=str(spam))
    assert mapping.headerless and (mapping.label, mapping.text) == ("0", "1")


def test_classification_counts_label_map_and_tokens(shared_data, smollm2_tokenizer, tmp_path):
    dev = shared_data / "cls_sst2" / "dev.tsv"
    result = inspect_classification(dev, smollm2_tokenizer, max_length=16, keep=3, example=2)
    r = result.report
    expected = tsv_labels(dev, 0, skip_header=True)
    assert r["task"] == "classification" and r["records"] == r["usable"] == 872 == sum(expected.values())
    assert r["label_counts"] == {"0": expected["0"], "1": expected["1"]} == {"0": 428, "1": 444}
    assert r["label_map"] == {"0": 0, "1": 1} and r["columns"] == "text 'content', label 'label' (detected)"
    with dev.open(encoding="utf-8") as fh:
        texts = [line.rstrip("\n").split("\t")[1] for line in fh][1:]
    whole = [len(smollm2_tokenizer(t)["input_ids"]) for t in texts]
    assert r["tokens"] == sum(min(n, 16) for n in whole) and r["truncated"] == sum(n > 16 for n in whole)
    assert [s["input_ids"] for s in result.samples] == [
        smollm2_tokenizer(t, truncation=True, max_length=16)["input_ids"] for t in texts[:3]
    ]
    i, source, view = result.example
    assert (i, source, view["text"], view["label_id"]) == (2, "dev.tsv#2", texts[1], 0)

    # the same rows without a header, by position (as data.columns / --column label=0 --column text=1)
    train = shared_data / "cls_sst2" / "train.head2000.tsv"
    bare = without_header(train, tmp_path / "train.tsv")
    counts = tsv_labels(train, 0, skip_header=True)
    for columns in (None, {"label": "0", "text": "1"}):
        r = inspect_classification(bare, smollm2_tokenizer, columns=columns).report
        assert r["headerless"] and r["label_counts"] == dict(sorted(counts.items())) == {"0": 899, "1": 1101}
    # and the training loader reads that file with the same mapping
    loaded = load_examples(bare, columns={"label": "0", "text": "1"})
    assert Counter(x.label for x in loaded.records) == counts and loaded.records[0].text.startswith(
        "hide new"
    )

    # --labels fixes the order; other labels are the trainer's unknown_label rejects
    r = inspect_classification(dev, smollm2_tokenizer, labels=["1"]).report
    assert r["label_map"] == {"1": 0} and r["usable"] == 444
    assert r["rejected_by_reason"] == {"unknown_label": 428}


def test_bad_column_mappings_are_clear_errors(shared_data, tmp_path):
    dev = shared_data / "cls_sst2" / "dev.tsv"
    with pytest.raises(
        DataError, match=r"--column text=contnt: the file has no field 'contnt'\. Did you mean 'content'\?"
    ):
        check_column_names(dev, {"text": "contnt"})
    check_column_names(dev, {"text": "content", "label": "label"})  # real names pass
    bare = without_header(dev, tmp_path / "dev.tsv")
    with pytest.raises(DataError, match=r"gives text as '2', but this file has no header row and 2 columns"):
        load_examples(bare, columns={"label": "1", "text": "2"})


def test_pretrain_blocks_equal_the_trainers(shared_data, smollm2_tokenizer):
    c4 = shared_data / "llamafactory" / "c4_demo.jsonl"
    result = inspect_text(c4, smollm2_tokenizer, max_length=512, keep=3, example=2)
    blocks = build_blocks(load_texts(c4).records, smollm2_tokenizer, max_length=512)
    r, stats = result.report, blocks.stats()
    assert r["task"] == "pretrain" and r["documents"] == stats["documents"] == 300
    assert (r["tokens"], r["blocks"], r["last_block_tokens"], r["dropped_tokens"]) == (
        stats["tokens"],
        stats["blocks"],
        stats["last_block_tokens"],
        stats["dropped_tokens"],
    )
    assert r["separators"] == stats["separators"] == {"before": [], "after": ["<|im_end|>"]}
    assert [s.input_ids for _, s in result.samples] == [b.input_ids for b in blocks.samples[:3]]
    assert result.example[:2] == (2, "block 2")


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 9, 16, 17, 18, 25])
def test_block_counts_follow_cut_blocks(n):
    blocks, dropped = cut_blocks(list(range(n)), 8)
    assert block_counts(n, 8) == (len(blocks), len(blocks[-1]) if blocks else 0, dropped)


def test_pretrain_reads_a_header_less_tsv_by_position(shared_data, smollm2_tokenizer, tmp_path):
    bare = without_header(shared_data / "cls_sst2" / "dev.tsv", tmp_path / "dev.tsv")
    docs = load_texts(bare, columns={"text": "1"}).records
    assert len(docs) == 872 and docs[0].text == "one long string of cliches ."
    r = inspect_text(bare, smollm2_tokenizer, columns={"text": "1"}, max_length=256).report
    assert r["documents"] == 872
    assert r["blocks"] == len(build_blocks(docs, smollm2_tokenizer, max_length=256).samples)


def test_kto_labels_are_counted(shared_data, smollm2_tokenizer, tmp_path):
    rows = json.loads((shared_data / "llamafactory" / "kto_en_demo.json").read_text())[:6]
    part = tmp_path / "kto.json"
    part.write_text(json.dumps(rows))
    r = inspect_preference(part, smollm2_tokenizer, max_length=4096).report
    assert r["format"] == "kto" and r["kind"] == "kto" and r["usable"] == 6
    good = sum(bool(x["label"]) for x in rows)
    assert r["labels"] == {"desirable": good, "undesirable": 6 - good}


def test_the_training_config_reads_the_same_header_less_file(shared_data, tmp_path):
    """data.columns by position (YAML numbers or strings) is what `lmtune train` reads the file with."""
    from lmtune.config.loader import validate_config
    from lmtune.data.sources import load_sources

    bare = without_header(shared_data / "cls_sst2" / "dev.tsv", tmp_path / "dev.tsv")
    counts = tsv_labels(shared_data / "cls_sst2" / "dev.tsv", 0, skip_header=True)
    for task, columns in (("classification", {"label": 0, "text": 1}), ("pretrain", {"text": "1"})):
        cfg = validate_config({"task": task, "data": {"path": str(bare), "columns": columns}})
        assert cfg.data.columns == {k: str(v) for k, v in columns.items()}
        records = load_sources(cfg.data, task).records
        assert len(records) == 872 and records[0].text == "one long string of cliches ."
        if task == "classification":
            assert Counter(r.label for r in records) == counts


def test_max_prompt_length_shortens_prompts_as_training_does(shared_data, smollm2_tokenizer, tmp_path):
    rows = json.loads((shared_data / "llamafactory" / "kto_en_demo.json").read_text())[:3]
    part = tmp_path / "kto.json"
    part.write_text(json.dumps(rows))
    plain = inspect_preference(part, smollm2_tokenizer, max_length=300).report
    assert plain["rejected_by_reason"] == {"prompt_too_long": 2}  # prompts of 1,080 and 841 tokens
    cut = inspect_preference(part, smollm2_tokenizer, max_length=300, max_prompt_length=200).report
    assert cut["usable"] == 3 and cut["rejected"] == 0 and cut["prompt_length_percentiles"]["p100"] <= 200


def test_json_records_by_their_fields_and_a_file_of_no_task(tmp_path):
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text('{"text": "good film", "label": "pos"}\n{"text": "bad film", "label": "neg"}\n')
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"text": "just some text"}\n')
    assert detect_task(labelled)[0] == "classification" and detect_task(plain)[0] == "pretrain"
    other = tmp_path / "other.jsonl"
    other.write_text('{"foo": 1}\n')
    with pytest.raises(DataError, match=r"cannot tell which task .* keys \['foo'\].* --task sft\|pretrain"):
        detect_task(other)
