"""Raw-text loading for task: pretrain, checked against independent reads of the real files."""

from __future__ import annotations

import csv
import json
import random

import pytest

from lmtune.data.sources import SourceSpec, load_file
from lmtune.data.text import TextDocument, load_texts
from lmtune.errors import DataError
from lmtune.tokenize.blocks import build_blocks


@pytest.fixture(scope="module")
def shakespeare(shared_data):
    return shared_data / "pretrain_tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def c4(shared_data):
    return shared_data / "llamafactory" / "c4_demo.jsonl"


def c4_texts(path) -> list[str]:
    return [
        json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def long_line(n: int = 150_000) -> str:
    """Varied words (not one repeated token), so the tokenizer does real work on the line."""
    rnd = random.Random(0)
    words = ["thou", "art", "more", "lovely", "and", "temperate", "Zürich", "42,", "naïve", "day."]
    out: list[str] = []
    size = 0
    while size < n:
        w = rnd.choice(words)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n]


def test_txt_document_mode_is_one_document(shakespeare):
    result = load_texts(shakespeare)
    assert result.format == "text" and result.total == 1 and not result.rejects
    [doc] = result.records
    assert isinstance(doc, TextDocument)
    assert doc.text == shakespeare.read_text(encoding="utf-8")
    assert doc.source == "input.txt#1"


def test_txt_line_mode_has_one_document_per_non_empty_line(shakespeare):
    lines = [ln for ln in shakespeare.read_text(encoding="utf-8").split("\n") if ln.strip()]
    result = load_texts(shakespeare, text_split="line")
    assert len(result.records) == result.total == len(lines)
    assert [d.text for d in result.records] == lines
    assert result.records[0].source == "input.txt#1"
    assert result.records[-1].source == f"input.txt#{len(lines)}"
    assert len(load_texts(shakespeare, text_split="line", limit=25).records) == 25


def test_c4_demo_gives_its_300_documents(c4):
    expected = c4_texts(c4)
    result = load_texts(c4)
    assert len(expected) == 300
    assert [d.text for d in result.records] == expected
    assert result.records[299].source == "c4_demo.jsonl#300"


def test_c4_through_the_loader_contract_with_llamafactory_columns(c4):
    """dataset_info.json maps c4's text as `columns: {prompt: text}`; the task's loader takes that."""
    spec = SourceSpec(path=str(c4), label="c4_demo", columns={"prompt": "text"})
    result = load_file(spec, "pretrain", on_error="skip")
    assert [d.text for d in result.records] == c4_texts(c4)


def test_c4_demo_by_its_llamafactory_registry_name(shared_data, c4):
    from lmtune.config.loader import validate_config
    from lmtune.data.sources import load_sources

    registry = shared_data / "llamafactory" / "dataset_info.json"
    cfg = validate_config({"task": "pretrain", "data": {"registry": str(registry), "datasets": ["c4_demo"]}})
    sources = load_sources(cfg.data, "pretrain")
    assert [d.text for d in sources.records] == c4_texts(c4)
    assert sources.per_dataset[0]["format"] == "text"


def test_mapped_and_nested_text_field(c4, tmp_path):
    texts = c4_texts(c4)[:20]
    path = tmp_path / "nested.jsonl"
    path.write_text("".join(json.dumps({"id": i, "doc": {"body": t}}) + "\n" for i, t in enumerate(texts)))
    assert [d.text for d in load_texts(path, columns={"text": "doc.body"}).records] == texts
    with pytest.raises(DataError, match=r"no 'text' field.*columns: \{text: <field>\}"):
        load_texts(path)


def test_parquet_and_csv_text(c4, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = c4_texts(c4)[:10]
    pq.write_table(pa.table({"text": texts}), tmp_path / "t.parquet")
    assert [d.text for d in load_texts(tmp_path / "t.parquet").records] == texts
    with (tmp_path / "t.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["title", "body"])
        w.writerows([[str(i), t] for i, t in enumerate(texts)])
    assert [d.text for d in load_texts(tmp_path / "t.csv", columns={"text": "body"}).records] == texts


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv"])
def test_150k_character_line_loads_and_every_token_is_blocked(kind, tmp_path, smollm2_tokenizer):
    big = long_line()
    docs = ["A short first line.", big, "A short last line."]
    path = tmp_path / f"long.{kind}"
    if kind == "txt":
        path.write_text("\n".join(docs) + "\n", encoding="utf-8")
        result = load_texts(path, text_split="line")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
        result = load_texts(path)
    else:  # a cell over csv's default 131,072-character field limit
        with path.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([["text"], *[[d] for d in docs]])
        result = load_texts(path)
    assert [d.text for d in result.records] == docs and not result.rejects

    blocks = build_blocks(result.records, smollm2_tokenizer, max_length=512)
    eos = smollm2_tokenizer.eos_token_id
    expected = [t for d in docs for t in [*smollm2_tokenizer(d)["input_ids"], eos]]
    assert len(smollm2_tokenizer(big)["input_ids"]) > 20_000
    assert [t for s in blocks.samples for t in s.input_ids] == expected
    assert blocks.stats()["tokens"] == len(expected)


def test_unusable_text_is_rejected_with_its_place(tmp_path):
    rows = [
        '{"text": "Good document one."}',
        '{"text": ""}',
        '{"text": "   \\n\\t "}',
        '{"text": null}',
        '{"text": 42}',
        '{"body": "no text field"}',
        "{not json",
        '{"text": "Good document two."}',
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(rows) + "\n")
    result = load_texts(path)
    assert [d.text for d in result.records] == ["Good document one.", "Good document two."]
    assert [d.source for d in result.records] == ["mixed.jsonl#1", "mixed.jsonl#8"]
    got = [(r.record, r.line, r.field, r.reason) for r in result.rejects]
    assert got == [
        (2, 2, "text", "empty_text"),
        (3, 3, "text", "empty_text"),
        (4, 4, "text", "wrong_type"),
        (5, 5, "text", "wrong_type"),
        (6, 6, "text", "missing_field"),
        (7, 7, None, "invalid_json"),
    ]
    assert all(r.file == str(path) for r in result.rejects)
    assert result.rejects[2].raw == {"text": None}
    assert result.total == len(rows)

    with pytest.raises(DataError, match="'text' is empty") as err:
        load_texts(path, on_error="fail")
    assert (err.value.record, err.value.line, err.value.field) == (2, 2, "text")


def test_all_rejected_is_one_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text('{"text": ""}\n{"text": " "}\n')
    with pytest.raises(DataError, match="no usable records: all 2 were rejected"):
        load_texts(path)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(DataError, match="holds no text"):
        load_texts(blank)


@pytest.mark.parametrize(
    ("folder", "name", "task"),
    [
        ("llamafactory", "alpaca_en_demo.json", "task: sft"),
        ("openai_messages_msfoundry", "chat_train.jsonl", "task: sft"),
        ("llamafactory", "dpo_en_demo.json", "task: preference"),
        ("llamafactory", "kto_en_demo.json", "task: preference"),
        ("cls_sst2", "dev.tsv", "task: classification"),
    ],
)
def test_other_tasks_data_is_one_clear_error(shared_data, folder, name, task):
    with pytest.raises(DataError) as err:
        load_texts(shared_data / folder / name)
    text = str(err.value)
    assert name in text and task in text and "columns: {text:" in text


def test_option_mistakes_are_sentences(shakespeare, c4):
    with pytest.raises(DataError, match="format 'alpaca' is not raw text"):
        load_texts(c4, format="alpaca")
    with pytest.raises(DataError, match="columns:` does not apply to a .txt file"):
        load_texts(shakespeare, columns={"text": "body"})
    with pytest.raises(DataError, match="maps only 'text'"):
        load_texts(c4, columns={"instruction": "text"})
    with pytest.raises(DataError, match="unknown text_split"):
        load_texts(shakespeare, text_split="paragraphs")
    # accepted and ignored: they mean nothing for raw text
    assert len(load_texts(c4, system="You are helpful.", roles={"user": "human"}, limit=3).records) == 3
