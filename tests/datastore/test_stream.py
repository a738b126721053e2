"""The streaming reader gives exactly the records and rejects of the in-memory loader, and really
streams (records come out before the end of the file has been read)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtune.data import readers
from lmtune.data.load import load_conversations
from lmtune.data.sources import SourceSpec
from lmtune.datastore.stream import RejectSink, StreamStats, stream_conversations
from lmtune.errors import DataError


def _bad_jsonl(tmp_path: Path) -> Path:
    ok = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    p = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps(ok),
        '{"messages": [',
        json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]}),
        "",
        json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}),
        "[1, 2]",
        json.dumps(ok),
    ]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def _bad_csv(tmp_path: Path) -> Path:
    p = tmp_path / "pc.csv"
    p.write_text('prompt,completion\n"Hi, there",Hello\nbad,row,extra\n\n"multi\nline",4\n"open,5\n')
    return p


@pytest.fixture()
def files(tmp_path, shared_data) -> list[tuple[Path, dict]]:
    return [
        (shared_data / "alpaca_en_stanford" / "alpaca_tiny.json", {}),
        (
            shared_data / "alpaca_en_stanford" / "seed_tasks.jsonl",
            {"columns": {"input": "instances.0.input", "output": "instances.0.output"}},
        ),
        (shared_data / "dolly_15k" / "databricks-dolly-15k.head34.jsonl", {"system": "Be brief."}),
        (shared_data / "openai_messages_msfoundry" / "stock_toolcall_training.jsonl", {"limit": 7}),
        (shared_data / "sharegpt_fastchat" / "dummy_conversation.json", {}),
        (_bad_jsonl(tmp_path), {}),
        (_bad_csv(tmp_path), {}),
    ]


def test_same_records_and_rejects_as_the_in_memory_loader(files, tmp_path):
    for path, opts in files:
        ref = load_conversations(path, **opts)
        sink = RejectSink(tmp_path / f"{path.name}.rejects.jsonl")
        spec = SourceSpec(str(path), path.name, columns=opts.get("columns", {}), system=opts.get("system"),
                          limit=opts.get("limit"))  # fmt: skip
        stats = StreamStats(str(path))
        got = list(stream_conversations(spec, on_error="skip", sink=sink, stats=stats))
        sink.close()
        assert [(c.source, c.to_dict()) for c in got] == [(c.source, c.to_dict()) for c in ref.records], path
        assert stats.format == ref.format and stats.read == ref.total and stats.usable == len(ref.records)
        written = sink.path.read_text().splitlines() if sink.path.exists() else []
        assert [json.loads(x) for x in written] == [
            json.loads(json.dumps(r.to_dict(), default=str)) for r in ref.rejects
        ]
        assert sink.by_reason() == ref.reject_counts()
    # the crafted files do have rejects, with file and line
    assert sink.total == 2 and [(r.line, r.raw) for r in sink.first] == [(3, "bad,row,extra"), (7, '"open,5')]


def test_fail_names_the_first_bad_record(tmp_path):
    p = _bad_jsonl(tmp_path)
    with pytest.raises(DataError) as err:
        list(stream_conversations(SourceSpec(str(p), p.name), on_error="fail", sink=RejectSink()))
    assert err.value.line == 2 and "mixed.jsonl" in str(err.value)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".txt"])
def test_readers_stream_without_reading_the_whole_file(tmp_path, monkeypatch, suffix):
    """Records come out before a bad byte at the end of the file is reached, and the whole-file
    reader is never called: the file is read line by line."""
    monkeypatch.setattr(readers, "_read_text", lambda *a: pytest.fail("read the whole file"))
    p = tmp_path / f"big{suffix}"
    row = {".jsonl": '{"prompt": "p", "completion": "c"}\n', ".csv": "p,c\n", ".txt": "a line\n"}[suffix]
    head = "prompt,completion\n" if suffix == ".csv" else ""
    p.write_bytes((head + row * 500).encode() + b"\xff\n")
    it = readers.iter_raw_records(p, text_split="line")
    first = [next(it) for _ in range(500)]
    assert all(r.data is not None for r in first)
    with pytest.raises(DataError, match="UTF-8") as err:
        next(it)
    assert err.value.line == 501 + bool(head)


def test_streamed_lines_match_the_whole_text_readers(tmp_path):
    """The line stream parses exactly as the whole-text readers did (CRLF, blank lines, U+2028
    inside a JSON string, a BOM, a last line without newline)."""
    p = tmp_path / "x.jsonl"
    p.write_bytes(
        b"\xef\xbb\xbf" + '{"t": "a\u2028b"}\r\n\n{"t": 1}\n[1]\n{bad\n  \n{"t": "\u00e9"}'.encode()
    )
    text = p.read_text(encoding="utf-8-sig")
    assert list(readers.iter_raw_records(p)) == list(readers._read_jsonl(text, str(p)))
    t = tmp_path / "x.txt"
    t.write_bytes(b"one\r\ntwo\n\n\nthree\r\nfour\n  \nfive")
    whole = t.read_text()
    for split in ("line", "paragraph"):
        assert list(readers.iter_raw_records(t, text_split=split)) == list(
            readers._read_txt(whole, str(t), split)
        )
