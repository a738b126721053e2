"""Readers: every supported file type, read from real third-party files where we have them."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmtune.data.readers import RawRecord, iter_raw_records
from lmtune.errors import DataError


def read(path, **kw) -> list[RawRecord]:
    return list(iter_raw_records(path, **kw))


# ---------------------------------------------------------------- JSON


def test_json_array_pretty_printed_has_start_lines(shared_data):
    path = shared_data / "alpaca_en_stanford" / "alpaca_small.json"
    recs = read(path)
    assert len(recs) == 2000 and all(r.error is None for r in recs)
    assert [r.index for r in recs[:3]] == [1, 2, 3]
    # the line of record 404's "instruction" key, found by plain text search, is one below its "{"
    lines = path.read_text().split("\n")
    key_line = lines.index('        "instruction": "Simplify the given arithmetic expression.",') + 1
    assert recs[403].line == key_line - 1
    assert recs[403].data == {
        "instruction": "Simplify the given arithmetic expression.",
        "input": "(5x+3)(2x\u22125)",
        "output": "10x\u00b2 - 15x + 15",
    }
    assert recs[0].line == 2


def test_json_array_on_one_line(shared_data):
    recs = read(shared_data / "alpaca_en_stanford" / "alpaca_tiny.json")
    assert len(recs) == 100
    assert {r.line for r in recs} == {1}
    assert set(recs[0].data) == {"instruction", "input", "output", "text"}


def test_jsonl_saved_as_json(tmp_path):
    p = tmp_path / "data.json"
    p.write_text('{"a": 1}\n{"a": 2}\n\n{"a": 3\n{"a": 4}\n')
    recs = read(p)
    assert [r.data for r in recs] == [{"a": 1}, {"a": 2}, None, {"a": 4}]
    assert [r.line for r in recs] == [1, 2, 4, 5]
    assert recs[2].error.reason == "invalid_json"


def test_json_object_wrapping_one_list(tmp_path):
    p = tmp_path / "wrapped.json"
    p.write_text(json.dumps({"version": "1.0", "data": [{"x": "1"}, {"x": "2"}]}))
    assert [r.data for r in read(p)] == [{"x": "1"}, {"x": "2"}]


def test_json_single_record_object_is_one_record(tmp_path):
    p = tmp_path / "one.json"
    rec = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    p.write_text(json.dumps(rec))
    assert [r.data for r in read(p)] == [rec]


def test_json_object_with_two_lists_is_an_error(tmp_path):
    p = tmp_path / "two.json"
    p.write_text(json.dumps({"train": [{"x": 1}], "test": [{"x": 2}]}))
    with pytest.raises(DataError, match="several lists"):
        read(p)


def test_invalid_json_array_names_file_line_and_column(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('[\n  {"a": 1},\n  {"a": 2,}\n]\n')
    with pytest.raises(DataError) as err:
        read(p)
    msg = str(err.value)
    assert "broken.json" in msg and "line 3" in msg and "column" in msg and "Fix:" in msg
    assert err.value.line == 3


def test_json_array_element_not_an_object(tmp_path):
    p = tmp_path / "mixed.json"
    p.write_text('[{"a": 1}, "oops", {"a": 2}]')
    recs = read(p)
    assert [r.error.reason if r.error else None for r in recs] == [None, "not_an_object", None]


def test_json_bom_is_ignored(tmp_path):
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"a": "\u00e9"}], ensure_ascii=False).encode())
    assert read(p)[0].data == {"a": "\u00e9"}


# ---------------------------------------------------------------- JSON lines


def test_jsonl_real_file(shared_data):
    recs = read(shared_data / "dolly_15k" / "databricks-dolly-15k.head34.jsonl")
    assert len(recs) == 34
    assert [r.line for r in recs] == list(range(1, 35))
    assert recs[1].data == {
        "instruction": "Which is a species of fish? Tope or Rope",
        "context": "",
        "response": "Tope",
        "category": "classification",
    }


def test_jsonl_without_trailing_newline(shared_data):
    recs = read(shared_data / "openai_messages_msfoundry" / "stock_toolcall_validation.jsonl")
    assert len(recs) == 10 and all(r.data for r in recs)


def test_jsonl_bad_line_is_a_reject_and_reading_continues(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2,,}\n[1, 2]\n{"a": 3}\r\n')
    recs = read(p)
    assert [r.index for r in recs] == [1, 2, 3, 4]
    assert [r.line for r in recs] == [1, 3, 4, 5]
    bad = recs[1].error
    assert bad.reason == "invalid_json" and bad.line == 3 and bad.record == 2
    assert bad.raw == '{"a": 2,,}' and "line 3" in bad.message and "Fix:" in bad.message
    assert recs[2].error.reason == "not_an_object"
    assert recs[3].data == {"a": 3}


def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"t": "a\u2028b"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read(p)[0].data == {"t": "a\u2028b"}


def test_jsonl_holding_a_json_array(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('[\n{"a": 1},\n{"a": 2}\n]')
    assert [r.data for r in read(p)] == [{"a": 1}, {"a": 2}]


# ---------------------------------------------------------------- CSV / TSV


def test_csv_quoting_crlf_bom(tmp_path):
    p = tmp_path / "d.csv"
    text = 'prompt,completion\r\n"a, b","line1\r\nline2"\r\n\r\nplain,"say ""hi"""\r\n'
    p.write_bytes(b"\xef\xbb\xbf" + text.encode())
    recs = read(p)
    assert [r.data for r in recs] == [
        {"prompt": "a, b", "completion": "line1\r\nline2"},
        {"prompt": "plain", "completion": 'say "hi"'},
    ]
    assert [r.line for r in recs] == [2, 5]


def test_csv_bad_row_has_its_line_and_raw_text(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b\n1,2\n3,4,5\n6,7\n")
    recs = read(p)
    assert [r.data for r in recs] == [{"a": "1", "b": "2"}, None, {"a": "6", "b": "7"}]
    bad = recs[1].error
    assert bad.reason == "bad_row" and bad.line == 3 and bad.raw == "3,4,5"
    assert "3 cells" in bad.message and "header has 2" in bad.message


def test_csv_unterminated_quote_is_a_bad_row_not_a_swallowed_file(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('a,b\n1,"oops\n2,3\n4,5\n')
    recs = read(p)
    assert recs[-1].error is not None and recs[-1].error.reason == "bad_row"
    assert recs[-1].line == 2


def test_csv_header_problems(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,a\n1,2\n")
    with pytest.raises(DataError, match="duplicate"):
        read(p)
    p.write_text("")
    with pytest.raises(DataError, match="empty"):
        read(p)


def test_tsv_real_files_lf_and_crlf(shared_data):
    dev = read(shared_data / "cls_sst2" / "dev.tsv")
    assert len(dev) == 872 and set(dev[0].data) == {"label", "content"}
    assert dev[0].data == {"label": "0", "content": "one long string of cliches ."}
    assert sum(r.data["label"] == "1" for r in dev) == 444
    train = read(shared_data / "cls_sst2" / "train.head2000.tsv")
    assert len(train) == 2000 and set(train[0].data) == {"label", "sentence"}
    assert not any("\r" in v for r in train for v in r.data.values())
    assert train[0].data["sentence"] == "hide new secretions from the parental units"


def test_tsv_quotes_are_text(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text('text\tlabel\n"quoted start\t1\nnext row\t0\n')
    assert [r.data for r in read(p)] == [
        {"text": '"quoted start', "label": "1"},
        {"text": "next row", "label": "0"},
    ]


# ---------------------------------------------------------------- Parquet / text


def test_parquet(tmp_path):
    p = tmp_path / "d.parquet"
    table = pa.table({"instruction": ["a", "b"], "output": ["x", "y"], "n": [1, 2]})
    pq.write_table(table, p)
    recs = read(p)
    assert [r.data for r in recs] == [
        {"instruction": "a", "output": "x", "n": 1},
        {"instruction": "b", "output": "y", "n": 2},
    ]
    assert [r.index for r in recs] == [1, 2] and recs[0].line is None


def test_parquet_garbage_is_a_data_error(tmp_path):
    p = tmp_path / "d.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"d\.parquet"):
        read(p)


def test_txt_splits(shared_data, tmp_path):
    shakespeare = shared_data / "pretrain_tinyshakespeare" / "input.txt"
    whole = read(shakespeare)
    assert len(whole) == 1 and len(whole[0].data["text"]) == 1115394
    text = shakespeare.read_text()
    paras = read(shakespeare, text_split="paragraph")
    assert len(paras) == len(re.split(r"\n\s*\n", text.strip()))
    assert paras[0].data["text"] == "First Citizen:\nBefore we proceed any further, hear me speak."
    assert paras[1].line == 4
    lines = read(shakespeare, text_split="line")
    assert len(lines) == sum(1 for line in text.split("\n") if line.strip())

    p = tmp_path / "t.txt"
    p.write_text("one\r\n\r\n\r\ntwo\r\nthree\r\n")
    assert [(r.line, r.data["text"]) for r in read(p, text_split="paragraph")] == [
        (1, "one"),
        (4, "two\nthree"),
    ]
    assert [(r.line, r.data["text"]) for r in read(p, text_split="line")] == [
        (1, "one"),
        (4, "two"),
        (5, "three"),
    ]
    with pytest.raises(DataError, match="text_split"):
        read(p, text_split="sentence")


# ---------------------------------------------------------------- file-level errors


def test_unknown_extension_missing_file_and_folder(tmp_path):
    p = tmp_path / "d.xlsx"
    p.write_text("x")
    with pytest.raises(DataError, match=r"d\.xlsx.*\.jsonl"):
        read(p)
    with pytest.raises(DataError, match="not found"):
        read(tmp_path / "nope.jsonl")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(DataError, match="folder"):
        read(tmp_path / "dir.json")


def test_not_utf8(tmp_path):
    p = tmp_path / "latin.jsonl"
    p.write_bytes('{"a": "ok"}\n{"a": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError) as err:
        read(p)
    assert "latin.jsonl" in str(err.value) and "UTF-8" in str(err.value) and err.value.line == 2
    p.write_bytes('{"a": 1}'.encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16"):
        read(p)


def test_json_single_alpaca_record_with_a_list_field_is_one_record(tmp_path):
    p = tmp_path / "one.json"
    rec = {"instruction": "i", "output": "o", "examples": [{"x": 1}]}
    p.write_text(json.dumps(rec))
    assert [r.data for r in read(p)] == [rec]
