"""The pretraining token store: blocks cut on demand equal lmtune.tokenize.blocks.build_blocks on the
same documents (whole set, split by documents, split by blocks, mixed files), rejects equal
load_texts' ones, and a second call maps the store without tokenising."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest

from lmtune.config.schema import RunConfig
from lmtune.data.sources import SourceSpec, load_sources
from lmtune.data.split import split_records
from lmtune.data.text import load_texts
from lmtune.datastore.blocks import TokenBlocks
from lmtune.datastore.text_store import build_or_load_text
from lmtune.tokenize.blocks import build_blocks

L = 48


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, shared_data) -> Path:
    """60 paragraphs of Tiny Shakespeare as {"text"} records, a bad JSON line and an empty text."""
    text = (shared_data / "pretrain_tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:12000]
    paras = [p for p in text.split("\n\n") if p.strip()][:60]
    lines = [json.dumps({"text": p}) for p in paras]
    lines.insert(5, "{broken")
    lines.insert(9, json.dumps({"text": "  "}))
    p = tmp_path_factory.mktemp("text") / "shake.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def as_lists(blocks: TokenBlocks) -> list[dict]:
    return [blocks[i] for i in range(len(blocks))]


def expected(block_set) -> list[dict]:
    return [{"input_ids": b.input_ids, "labels": b.labels} for b in block_set.samples]


def test_blocks_equal_build_blocks(text_file, smollm2_tokenizer, tmp_path):
    tok = copy.deepcopy(smollm2_tokenizer)
    builds: list[str] = []
    st = build_or_load_text(
        [SourceSpec(str(text_file), text_file.name)], tok, cache_dir=tmp_path, on_build=builds.append
    )
    loaded = load_texts(text_file)
    docs = loaded.records
    assert st.meta["documents"] == len(docs) == 60 and not st.hit
    rows = [(r.file, r.record, r.line, r.field, r.reason, r.message, r.raw) for r in st.rejects()]
    assert rows == [(r.file, r.record, r.line, r.field, r.reason, r.message, r.raw) for r in loaded.rejects]

    whole = TokenBlocks(st, st.order, L)
    ref = build_blocks(docs, tok, max_length=L)
    assert as_lists(whole) == expected(ref) and whole.stats() == ref.stats()

    # split by documents: the same seeded rule as split_records
    train_docs, val_docs, _ = split_records(docs, val_size=0.2, seed=5)
    train_pos, val_pos, _ = split_records(list(range(len(docs))), val_size=0.2, seed=5)
    for pos, part in ((train_pos, train_docs), (val_pos, val_docs)):
        got = TokenBlocks(st, st.order[pos], L)
        ref_part = build_blocks(part, tok, max_length=L)
        assert as_lists(got) == expected(ref_part) and got.stats() == ref_part.stats()

    # split by blocks (the one-document case of train/pretrain.py): a subset of the whole stream
    train_b, val_b, _ = split_records(ref.samples, val_size=0.25, seed=1)
    idx_t, idx_v, _ = split_records(list(range(len(ref.samples))), val_size=0.25, seed=1)
    assert as_lists(whole.subset(idx_t)) == expected(replace(ref, samples=train_b))
    assert as_lists(whole.subset(idx_v)) == expected(replace(ref, samples=val_b))

    again = build_or_load_text(
        [SourceSpec(str(text_file), text_file.name)], tok, cache_dir=tmp_path, on_build=builds.append
    )
    assert again.hit and again.path == st.path and len(builds) == 1


def test_mixed_files_follow_the_mix(text_file, smollm2_tokenizer, tmp_path):
    second = tmp_path / "second.jsonl"
    second.write_text(
        "\n".join(json.dumps({"text": f"Line {i} of the second file."}) for i in range(7)) + "\n"
    )
    cfg = RunConfig.model_validate(
        {
            "task": "pretrain",
            "model": {"name": "x"},
            "data": {
                "datasets": [{"path": str(text_file)}, {"path": str(second), "weight": 2.0}],
                "mix": "interleave",
            },
        }
    )
    from lmtune.data.sources import training_specs

    d = cfg.data
    tok = copy.deepcopy(smollm2_tokenizer)
    st = build_or_load_text(
        training_specs(d, "pretrain"), tok, cache_dir=tmp_path, mix=(d.mix, d.mix_stop, d.seed)
    )
    sources = load_sources(d, "pretrain")
    ref = build_blocks(sources.records, tok, max_length=L)
    assert as_lists(TokenBlocks(st, st.order, L)) == expected(ref)
    assert [row["used"] for row in st.meta["per_dataset"]] == [row["used"] for row in sources.per_dataset]


def test_headerless_csv_by_position_keeps_its_first_row(smollm2_tokenizer, tmp_path):
    """columns: {text: "1"} names a column by position: the file has no header row, so its first row
    is a document too (the store once read it as a header and took the id column as the text)."""
    bare = tmp_path / "bare.csv"
    bare.write_text("1,The first row is text.\n2,So is the second.\n3,And the third.\n", encoding="utf-8")
    tok = copy.deepcopy(smollm2_tokenizer)
    spec = SourceSpec(str(bare), bare.name, columns={"text": "1"})
    st = build_or_load_text([spec], tok, cache_dir=tmp_path)
    texts = ["The first row is text.", "So is the second.", "And the third."]
    assert [d.text for d in load_texts(bare, columns={"text": "1"}).records] == texts
    assert st.meta["documents"] == 3 and st.meta["read_rejected"] == 0
    ids = [
        tok(t, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
        for t in texts
    ]
    assert st.doc_len.tolist() == [len(i) for i in ids]
    assert st.tokens.tolist() == [t for i in ids for t in i]
