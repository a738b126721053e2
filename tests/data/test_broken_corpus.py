"""Every broken input in tests/data/broken/ (manifest.json) through the real loader and tokenisation.

Each entry must end one of three ways, never with another exception: it loads (`ok`), its bad
records are skipped, counted by reason and written to the rejects file with file, record, line,
field and a fix (`skip`), or the load stops with one LmtuneError naming the file, where, what and
how to fix it (`error`). Large and binary inputs are generated here rather than committed. A
subset also goes through the real command line (tests/cli/test_bad_input_cli.py).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from lmtune.data.load import write_rejects
from lmtune.data.records import Reject
from lmtune.data.sources import SourceSpec, load_file
from lmtune.errors import LmtuneError

BROKEN = Path(__file__).resolve().parent / "broken"
ENTRIES: list[dict[str, Any]] = json.loads((BROKEN / "manifest.json").read_text())["entries"]
GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
MAX_LENGTH = 256


def _good() -> bytes:
    return json.dumps(GOOD).encode() + b"\n"


def _generate(name: str, folder: Path) -> Path:
    """The generated entries: too big or too binary to commit."""
    p = folder / name
    rng = random.Random(name)
    if name == "random_binary.jsonl":
        p.write_bytes(b"\xc3\x28" + rng.randbytes(4000))  # 0xc3 0x28: an invalid UTF-8 sequence up front
    elif name == "random_binary.parquet":
        p.write_bytes(rng.randbytes(4000))
    elif name == "nul_bytes.jsonl":
        p.write_bytes(_good() + b"\x00" * 64 + b"\n")
    elif name == "directory.jsonl":
        p.mkdir()
        (p / "inside.jsonl").write_bytes(_good())
    elif name == "missing_file.jsonl":
        pass
    elif name == "huge_integer.jsonl":
        p.write_bytes(_good() + b'{"instruction": "a", "output": "b", "n": ' + b"9" * 5000 + b"}\n")
    elif name == "huge_integer.json":
        p.write_bytes(b'[{"instruction": "a", "output": "b", "n": ' + b"9" * 5000 + b"}]\n")
    elif name == "deep_nesting.jsonl":
        p.write_bytes(_good() + b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")
    elif name == "deep_nesting.json":
        p.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    elif name == "line_100k_chars.jsonl":
        long = {
            "messages": [
                {"role": "user", "content": "Write"},
                {"role": "assistant", "content": "w" * 100_000},
            ]
        }
        p.write_bytes(_good() + json.dumps(long).encode() + b"\n" + b"x" * 100_000 + b"\n")
    elif name == "long_conversation.jsonl":
        turns = [{"role": r, "content": f"{r} turn {i}"} for i in range(160) for r in ("user", "assistant")]
        p.write_bytes(_good() + json.dumps({"messages": turns}).encode() + b"\n")
    else:
        raise AssertionError(f"no generator for {name}")
    return p


@pytest.fixture(scope="module")
def tokenizers(smollm2_tokenizer, family_tokenizer_dir):
    from transformers import AutoTokenizer

    cache: dict[str, Any] = {"smollm2": smollm2_tokenizer}

    def get(name: str) -> Any:
        if name not in cache:
            cache[name] = AutoTokenizer.from_pretrained(family_tokenizer_dir(name))
        return cache[name]

    return get


def entry_path(entry: dict[str, Any], tmp_path: Path) -> Path:
    return _generate(entry["file"], tmp_path) if entry.get("generated") else BROKEN / entry["file"]


def run_entry(entry: dict[str, Any], path: Path, tokenizers: Any) -> tuple[Any, list[Reject], dict[str, Any]]:
    """Load `path` as the entry's task, then tokenise (SFT) or measure with the template (preference)
    as training does; returns (load result, all rejects, tokenisation stats)."""
    options = entry.get("options", {})
    result = load_file(SourceSpec(str(path), path.name), entry["task"], on_error="skip")
    rejects = list(result.rejects)
    stats: dict[str, Any] = {}
    tok = tokenizers(entry.get("tokenizer", "smollm2"))
    if entry["task"] == "sft":
        from lmtune.tokenize.dataset import tokenize_records

        merge = options.get("system_merge", "auto")
        tokenized = tokenize_records(
            result.records, tok, max_length=MAX_LENGTH, train_on="all", system_merge=merge
        )
        rejects += tokenized.rejects
        stats = tokenized.stats()
        stats["tokenize_rejects"] = tokenized.rejects
    elif entry["task"] == "preference":
        from lmtune.train.preference import fit_lengths

        merge = options.get("system_merge", "auto")
        kept, stats, late = fit_lengths(
            result.records, tokenizer=tok, max_length=MAX_LENGTH, max_prompt=None, system_merge=merge
        )
        rejects += late
        stats["tokenize_rejects"] = late
    return result, rejects, stats


def assert_clear_error(message: str, entry: dict[str, Any], path: Path) -> None:
    """One sentence that names the file (or the record inside it), says what is wrong and how to fix it."""
    assert path.name in message, message
    assert "Traceback" not in message and "\n" not in message.strip(), message
    assert "Fix:" in message or "Remove them, or set" in message, message
    for needle in entry["error"]:
        assert needle in message, (needle, message)


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "entry",
    ENTRIES,
    ids=[e["file"] + ("-" + "-".join(e["options"].values()) if "options" in e else "") for e in ENTRIES],
)
def test_broken_input(entry, tmp_path, tokenizers):
    path = entry_path(entry, tmp_path)
    if entry["expect"] == "error":
        with pytest.raises(LmtuneError) as caught:
            run_entry(entry, path, tokenizers)
        assert_clear_error(str(caught.value), entry, path)
        return

    result, rejects, stats = run_entry(entry, path, tokenizers)
    assert len(result.records) == entry["loaded"], [r.message for r in result.rejects]
    assert result.total == entry["loaded"] + sum(entry.get("reasons", {}).values())
    load_reasons: dict[str, int] = {}
    for r in result.rejects:
        load_reasons[r.reason] = load_reasons.get(r.reason, 0) + 1
    assert load_reasons == entry.get("reasons", {})
    late_reasons: dict[str, int] = {}
    for r in stats.get("tokenize_rejects", []):
        late_reasons[r.reason] = late_reasons.get(r.reason, 0) + 1
    assert late_reasons == entry.get("tokenize_reasons", {})
    if entry["task"] == "sft":
        assert stats["truncated"] == entry.get("truncated", 0)
        assert stats["samples"] == entry["loaded"] - sum(late_reasons.values())
    if entry["expect"] == "ok":
        assert not rejects
        return

    # skip: every reject is written to the rejects file, in strict JSON, pointing at its record
    out = tmp_path / "rejects.jsonl"
    write_rejects(rejects, out)
    rows = [_strict_json(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(rejects) == sum(entry.get("reasons", {}).values()) + sum(late_reasons.values())
    for row in rows:
        assert Path(row["file"]).name == path.name
        assert isinstance(row["record"], int) and row["record"] >= 1
        assert row["line"] is not None or row["reason"] in ("template_error",)
        assert " Fix: " in row["message"] and row["reason"] in (*entry.get("reasons", {}), *late_reasons)
        assert "raw" in row  # the record as read (a null line is raw null)
    fields = {row["reason"]: row["field"] for row in rows}
    for reason, field in fields.items():
        if reason not in ("invalid_json", "not_an_object", "bad_row"):  # whole-line problems have no field
            assert field, (reason, rows)


def test_the_corpus_is_big_enough():
    files = {e["file"] for e in ENTRIES}
    assert len(files) >= 40
    committed = {e["file"] for e in ENTRIES if not e.get("generated")}
    assert committed == {p.name for p in BROKEN.iterdir() if p.name != "manifest.json"}
    assert {e["expect"] for e in ENTRIES} == {"ok", "skip", "error"}


def test_preference_on_gemma2_merges_system_and_rejects_what_the_template_refuses(tokenizers):
    """The issue's case: Gemma 2's template raises "System role not supported" (and "roles must
    alternate"); a preference run used to stop with jinja2's traceback there."""
    from lmtune.data.preference import PreferencePair
    from lmtune.errors import ConfigError, DataError
    from lmtune.train.preference import fit_lengths

    tok = tokenizers("gemma2")
    answer = [{"role": "assistant", "content": "a"}]
    system = PreferencePair(
        [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "p"}],
        answer,
        [{"role": "assistant", "content": "b"}],
        source="x.jsonl#1",
    )
    double_user = PreferencePair(
        [{"role": "user", "content": "p"}, {"role": "user", "content": "q"}],
        answer,
        [{"role": "assistant", "content": "b"}],
        source="x.jsonl#2",
    )
    kept, stats, rejects = fit_lengths([system, double_user], tokenizer=tok, max_length=256, max_prompt=None)
    assert [r.prompt for r in kept] == [[{"role": "user", "content": "Be brief\n\np"}]]
    rendered = tok.apply_chat_template(kept[0].prompt + answer, tokenize=False)
    assert "<start_of_turn>user\nBe brief\n\np<end_of_turn>" in rendered
    assert [(r.reason, r.file, r.record, r.field) for r in rejects] == [
        ("template_error", "x.jsonl", 2, "prompt")
    ]
    assert "Conversation roles must alternate" in rejects[0].message and "Fix:" in rejects[0].message
    assert stats["samples"] == 1 and stats["rejected"] == 1

    with pytest.raises(DataError, match="fails on every one of the 2 records"):
        fit_lengths([double_user, double_user], tokenizer=tok, max_length=256, max_prompt=None)
    with pytest.raises(ConfigError, match=r"no system role.*x\.jsonl#1.*system_merge: auto"):
        fit_lengths([system], tokenizer=tok, max_length=256, max_prompt=None, system_merge="never")
