"""load_examples on the real SST-2 files and on every kind of column layout and bad record;
the label-set helpers (sorting, unknown labels, counts, imbalance and sorted-file warnings)."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from lmtune.data.classification import (
    apply_labels,
    imbalance_warning,
    label_counts,
    label_string,
    load_examples,
    sort_labels,
    sorted_warning,
)
from lmtune.errors import DataError


def sst2_rows(path) -> list[tuple[str, str]]:
    """(label, text) pairs read independently: split each line on its one tab."""
    lines = path.read_bytes().decode("utf-8").replace("\r\n", "\n").rstrip("\n").split("\n")
    return [tuple(line.split("\t")) for line in lines[1:]]  # type: ignore[misc]


# ---------------------------------------------------------------- real files


@pytest.mark.parametrize(("name", "text_col"), [("train.head2000.tsv", "sentence"), ("dev.tsv", "content")])
def test_sst2_files_need_no_columns(shared_data, name, text_col):
    path = shared_data / "cls_sst2" / name
    res = load_examples(path)
    expected = sst2_rows(path)
    assert (res.columns.label, res.columns.text, res.columns.headerless) == ("label", text_col, False)
    assert (res.total, len(res.records), res.rejects) == (len(expected), len(expected), [])
    assert [(r.label, r.text) for r in res.records] == expected  # no merged lines, no stray \r
    assert res.records[9].source == f"{name}#10" and res.records[9].line == 11


def test_sst2_quotes_do_not_merge_lines(shared_data):
    path = shared_data / "cls_sst2" / "train.head2000.tsv"
    quoted = [t for _, t in sst2_rows(path) if '"' in t or t.count("'") % 2]
    assert quoted  # the file has unbalanced quote characters
    texts = {r.text for r in load_examples(path).records}
    assert all(t in texts for t in quoted)


def test_sst2_dev_label_counts(shared_data):
    res = load_examples(shared_data / "cls_sst2" / "dev.tsv")
    assert label_counts(res.records, ["0", "1"]) == {"0": 428, "1": 444}  # as its README says


def test_headerless_copy_is_detected(shared_data, tmp_path):
    src = sst2_rows(shared_data / "cls_sst2" / "dev.tsv")[:50]
    path = tmp_path / "noheader.tsv"
    path.write_text("".join(f"{label}\t{text}\n" for label, text in src))
    res = load_examples(path)
    assert res.columns.headerless and (res.columns.label, res.columns.text) == ("0", "1")
    assert [(r.label, r.text) for r in res.records] == src  # the first row is a record, not a header
    assert res.records[0].source == "noheader.tsv#1" and res.records[0].line == 1
    assert "no header row" in res.columns.describe()


def test_headerless_text_first_with_positions(shared_data, tmp_path):
    src = sst2_rows(shared_data / "cls_sst2" / "dev.tsv")[:20]
    path = tmp_path / "swapped.tsv"
    path.write_text("".join(f"{text}\t{label}\n" for label, text in src))
    res = load_examples(path, columns={"text": "0", "label": "1"})
    assert [(r.label, r.text) for r in res.records] == src
    auto = load_examples(path)  # two columns: the label is the one with few distinct values
    assert [(r.label, r.text) for r in auto.records] == src


def test_positions_out_of_range(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("0\tgood film\n1\tbad film\n")
    with pytest.raises(DataError, match="positions from 0 to 1"):
        load_examples(path, columns={"label": "0", "text": "2"})


# ---------------------------------------------------------------- column detection


def write_csv(path, header, rows) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_csv_with_quotes_and_commas(tmp_path):
    path = tmp_path / "reviews.csv"
    rows = [["It was fine, I guess", "neutral"], ["Loved it, twice", "positive"]]
    write_csv(path, ["review", "sentiment"], rows)
    res = load_examples(path)
    assert [(r.text, r.label) for r in res.records] == [(t, lab) for t, lab in rows]


def test_jsonl_int_labels_become_strings_and_pairs(tmp_path):
    path = tmp_path / "nli.jsonl"
    rows = [
        {"premise": "A man sleeps.", "hypothesis": "A man rests.", "label": 0},
        {"premise": "A dog runs.", "hypothesis": "A cat sits.", "label": 2.0},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    res = load_examples(path)
    assert (res.columns.text, res.columns.text_pair) == ("premise", "hypothesis")
    assert [(r.text, r.text_pair, r.label) for r in res.records] == [
        ("A man sleeps.", "A man rests.", "0"),
        ("A dog runs.", "A cat sits.", "2"),
    ]


def test_single_remaining_string_column_is_the_text(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"id": 3, "utter": "hi there", "y": "greet"}) + "\n")
    res = load_examples(path)
    assert (res.columns.text, res.columns.label) == ("utter", "y")


def test_ambiguous_label_columns_are_refused(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"text": "a", "label": 1, "category": "b"}) + "\n")
    with pytest.raises(DataError, match=r"several columns could be the label: label, category"):
        load_examples(path)
    res = load_examples(path, columns={"label": "category"})
    assert res.records[0].label == "b"


def test_ambiguous_text_is_refused(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"a": "one", "b": "two", "label": "x"}) + "\n")
    with pytest.raises(DataError, match="cannot tell which column is the text") as err:
        load_examples(path)
    assert "data.columns" in str(err.value)


def test_no_label_column(tmp_path):
    path = tmp_path / "x.csv"
    write_csv(path, ["text", "score_a"], [["good", "1"]])
    with pytest.raises(DataError, match="no label column"):
        load_examples(path)
    res = load_examples(path, require_label=False)
    assert res.records[0].label is None and res.columns.label is None


def test_columns_typo(tmp_path):
    path = tmp_path / "x.csv"
    write_csv(path, ["sentence", "label"], [["good", "1"]])
    with pytest.raises(DataError, match="Did you mean 'sentence'"):
        load_examples(path, columns={"text": "sentense"})
    with pytest.raises(DataError, match="not a classification field"):
        load_examples(path, columns={"input": "sentence"})
    with pytest.raises(DataError, match="not a classification format"):
        load_examples(path, format="alpaca")


# ---------------------------------------------------------------- bad records


def test_bad_records_are_rejected_with_reasons(tmp_path):
    path = tmp_path / "x.jsonl"
    lines = [
        json.dumps({"text": "fine", "label": "pos"}),
        json.dumps({"text": "   ", "label": "pos"}),
        json.dumps({"text": "no label"}),
        json.dumps({"text": "list label", "label": ["a", "b"]}),
        json.dumps({"text": 5, "label": "neg"}),
        "{not json",
        json.dumps({"text": "ok too", "label": "neg"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    res = load_examples(path)
    assert [r.text for r in res.records] == ["fine", "ok too"]
    assert [(r.record, r.line, r.reason) for r in res.rejects] == [
        (2, 2, "empty_text"),
        (3, 3, "missing_label"),
        (4, 4, "bad_label"),
        (5, 5, "not_text"),
        (6, 6, "invalid_json"),
    ]
    assert res.total == 7
    with pytest.raises(DataError, match=r"line 2, record 2, field 'text'"):
        load_examples(path, on_error="fail")


def test_unlabelled_records_pass_without_require_label(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"text": "a", "label": "p"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    res = load_examples(path, require_label=False)
    assert [r.label for r in res.records] == ["p", None]


def test_all_rejected_is_an_error(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"text": "", "label": 1}) + "\n")
    with pytest.raises(DataError, match="no usable records"):
        load_examples(path)


# ---------------------------------------------------------------- label set


def test_label_string():
    assert [label_string(v) for v in (1, 1.0, 2.5, True, " pos ", "", None, [1])] == [
        "1", "1", "2.5", "true", "pos", None, None, None,
    ]  # fmt: skip


def test_sort_labels_numeric_then_alphabetical():
    assert sort_labels(["10", "2", "-1", "2"]) == ["-1", "2", "10"]
    assert sort_labels(["b", "10", "a"]) == ["10", "a", "b"]


def test_apply_labels_rejects_unknown(tmp_path):
    path = tmp_path / "x.jsonl"
    rows = [{"text": f"t{i}", "label": lab} for i, lab in enumerate(["a", "b", "c", "a"])]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    records = load_examples(path).records
    kept, rejects = apply_labels(records, ["a", "b"], {"x.jsonl": str(path)})
    assert [r.text for r in kept] == ["t0", "t1", "t3"]
    (rej,) = rejects
    assert (rej.file, rej.record, rej.line, rej.field, rej.reason) == (
        str(path),
        3,
        3,
        "label",
        "unknown_label",
    )
    assert "'c'" in rej.message


def test_label_counts_and_imbalance():
    class R:
        def __init__(self, label):
            self.label = label

    records = [R("a")] * 12 + [R("b")] * 2
    counts = label_counts(records, ["a", "b", "c"])
    assert counts == {"a": 12, "b": 2, "c": 0}
    assert "no training records" in imbalance_warning(counts)
    assert "6x" in imbalance_warning({"a": 12, "b": 2})
    assert imbalance_warning({"a": 10, "b": 2}) is None  # exactly 5x is not "more than"
    assert label_counts(records) == dict(Counter({"a": 12, "b": 2}).most_common())


def test_sorted_warning():
    assert sorted_warning(["0"] * 50 + ["1"] * 50) is not None
    assert sorted_warning(["0", "1"] * 50) is None
    assert sorted_warning(["0"] * 3 + ["1"] * 3) is None  # too few to tell


@pytest.mark.parametrize(
    ("file", "task"),
    [
        ("llamafactory/dpo_en_demo.json", "task: preference"),
        ("llamafactory/alpaca_en_demo.json", "task: sft"),
    ],
)
def test_other_tasks_data_is_named(shared_data, file, task):
    with pytest.raises(DataError, match="no label column") as err:
        load_examples(shared_data / file)
    assert task in str(err.value)
