"""`lmtune data inspect` from the command line on real preference, raw-text and classification
files: the detected task, the printed view, --json, --task, --column by position and by name, and
the errors for a bad --column. Preference token counts are checked against the rows TRL's DPO
trainer itself tokenises (built through lmtune's own build_trainer)."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

import pytest
from rich.console import Console
from typer.testing import CliRunner

from lmtune.cli.app import app

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def inspect(*args: str):
    return runner.invoke(app, ["data", "inspect", *map(str, args)], env=WIDE)


def error(*args: str) -> str:
    """The one-line message `lmtune` prints for a user mistake (an LmtuneError, never a traceback)."""
    from lmtune.errors import LmtuneError

    result = inspect(*args)
    assert isinstance(result.exception, LmtuneError), result.output
    return " ".join(str(result.exception).split())


@pytest.fixture(scope="module")
def dpo_slice(shared_data, tmp_path_factory):
    """The first 4 records of LLaMA-Factory's dpo_en_demo (sharegpt ranking, as MedicalGPT's dpo_zh)."""
    rows = json.loads((shared_data / "llamafactory" / "dpo_en_demo.json").read_text())[:4]
    path = tmp_path_factory.mktemp("dpo") / "dpo_en_demo.head4.json"
    path.write_text(json.dumps(rows, ensure_ascii=False))
    return path


def trl_rows(model_dir, data, tmp_path, max_length):
    """prompt_ids / chosen_ids / rejected_ids as TRL's DPOTrainer tokenises the file for a real run."""
    from lmtune.config.loader import validate_config
    from lmtune.train.preference import build_trainer, fit_lengths, match_records, to_dataset
    from lmtune.train.session import Session

    cfg = validate_config(
        {
            "task": "preference",
            "model": {"name": str(model_dir)},
            "data": {"path": str(data), "max_length": max_length},
            "method": {"name": "lora", "r": 4},
            "train": {"max_steps": 1, "batch_size": 2, "bf16": False},
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    s = Session(cfg, console=Console(file=io.StringIO()))
    tok = s.load_tokenizer()
    pairs = match_records(s.load_data(split=False).train, "sigmoid")
    kept, _, rejects = fit_lengths(pairs, tokenizer=tok, max_length=max_length, max_prompt=None)
    trainer = build_trainer(s, s.prepare(s.load_model()), tok, to_dataset(kept), None)
    return [dict(row) for row in trainer.train_dataset], rejects


def test_preference_view_and_json_equal_the_dpo_trainers_tokens(tiny_model_dir, dpo_slice, tmp_path):
    result = inspect(dpo_slice, "--model", tiny_model_dir, "--json", "--records", "4", "--max-length", "512")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["task"], report["format"], report["task_from"]) == (
        "preference",
        "sharegpt_ranking",
        "sharegpt_ranking records",
    )
    rows, rejects = trl_rows(tiny_model_dir, dpo_slice, tmp_path, 512)
    assert report["records"] == 4 and report["usable"] == len(rows) and report["rejected"] == len(rejects)
    assert len(report["samples"]) == len(rows) > 0
    trained = 0
    for sample, row in zip(report["samples"], rows, strict=True):
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            assert sample[key] == row[key], key
        for answer in ("chosen", "rejected"):
            full = row["prompt_ids"] + row[f"{answer}_ids"]
            mask = [0] * len(row["prompt_ids"]) + [1] * len(row[f"{answer}_ids"])
            assert sample[answer] == {"input_ids": full[:512], "completion_mask": mask[:512]}
            trained += sum(mask[:512])
    assert report["trained_tokens"] == trained
    assert report["chosen_length_percentiles"]["p100"] == max(len(r["chosen_ids"]) for r in rows)

    # the printed view: the task, the counts and the first pair with its answer lengths
    shown = inspect(dpo_slice, "--model", tiny_model_dir, "--max-length", "512")
    assert shown.exit_code == 0, shown.output
    first = rows[0]
    assert "preference (sharegpt_ranking records)" in shown.output
    assert f"chosen ({len(first['chosen_ids'])} tokens)" in shown.output
    assert f"rejected ({len(first['rejected_ids'])} tokens)" in shown.output
    assert "language game simulating the first person perspective" in shown.output


def test_hh_rlhf_pair_is_shown_with_its_shared_prompt(tiny_model_dir, shared_data):
    result = inspect(shared_data / "torchtune_tiny_assets" / "hh_rlhf_tiny.json", "--model", tiny_model_dir)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "1 read, 1 usable pairs, 0 rejected" in out
    assert out.count("What do I do when I have a hole in my trousers?") == 1  # the prompt, once
    assert "Fix the hole." in out and "Take them off." in out


def test_raw_text_blocks_json(tiny_model_dir, shared_data):
    from transformers import AutoTokenizer

    from lmtune.data.text import load_texts
    from lmtune.tokenize.blocks import build_blocks

    c4 = shared_data / "llamafactory" / "c4_demo.jsonl"
    result = inspect(c4, "--model", tiny_model_dir, "--json", "--records", "2", "--max-length", "256")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    blocks = build_blocks(
        load_texts(c4).records, AutoTokenizer.from_pretrained(tiny_model_dir), max_length=256
    )
    assert report["task"] == "pretrain" and report["blocks"] == len(blocks.samples)
    assert [s["input_ids"] for s in report["samples"]] == [b.input_ids for b in blocks.samples[:2]]
    assert all(s["labels"] == s["input_ids"] for s in report["samples"])  # every token trained


def test_classification_by_position_and_by_name(tiny_model_dir, shared_data, tmp_path):
    train = shared_data / "cls_sst2" / "train.head2000.tsv"
    bare = tmp_path / "sst2_no_header.tsv"
    bare.write_bytes(train.read_bytes().split(b"\n", 1)[1])
    with train.open(newline="", encoding="utf-8") as fh:
        expected = Counter(
            r[0] for r in list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[1:] if r
        )
    by_position = inspect(
        bare, "--model", tiny_model_dir, "--json", "--column", "label=0", "--column", "text=1"
    )
    assert by_position.exit_code == 0, by_position.output
    report = json.loads(by_position.output)
    assert report["task"] == "classification" and report["headerless"]
    assert report["label_counts"] == dict(sorted(expected.items())) and report["label_map"] == {
        "0": 0,
        "1": 1,
    }
    assert report["samples"][0]["text"] == "hide new secretions from the parental units"

    dev = shared_data / "cls_sst2" / "dev.tsv"
    by_name = inspect(dev, "--model", tiny_model_dir, "--column", "text=content", "--column", "label=label")
    assert by_name.exit_code == 0, by_name.output
    assert "text 'content', label 'label' (from columns:)" in by_name.output
    assert "'0' -> 0, '1' -> 1" in by_name.output and "428 (49.1%)" in by_name.output
    assert "Example 1 (dev.tsv#1): label '0' -> id 0" in by_name.output


def test_task_option_overrides_detection(tiny_model_dir, shared_data):
    dev = shared_data / "cls_sst2" / "dev.tsv"
    as_text = inspect(
        dev, "--model", tiny_model_dir, "--task", "pretrain", "--column", "text=content", "--json"
    )
    assert as_text.exit_code == 0, as_text.output
    report = json.loads(as_text.output)
    assert (report["task"], report["task_from"], report["documents"]) == ("pretrain", "--task", 872)
    hh = shared_data / "torchtune_tiny_assets" / "hh_rlhf_tiny.json"
    assert "belongs to `task: preference`" in error(hh, "--model", tiny_model_dir, "--task", "sft")


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            ["text=2", "label=1"],
            "--column text=2: this file has no header row and 2 columns, counted from 0. Fix: give positions from 0 to 1",
        ),
        (["text=1", "label=sentiment"], "--column mixes positions (text=1) and names (label=sentiment)"),
        (["txt"], "--column 'txt' must look like canonical=yours"),
    ],
)
def test_bad_column_is_one_clear_error(tiny_model_dir, shared_data, tmp_path, columns, message):
    bare = tmp_path / "dev.tsv"
    bare.write_bytes((shared_data / "cls_sst2" / "dev.tsv").read_bytes().split(b"\n", 1)[1])
    assert message in error(bare, "--model", tiny_model_dir, *[x for c in columns for x in ("--column", c)])


def test_unknown_column_name_suggests_the_close_one(tiny_model_dir, shared_data):
    message = error(
        shared_data / "cls_sst2" / "dev.tsv", "--model", tiny_model_dir, "--column", "text=contnt"
    )
    assert "Did you mean 'content'?" in message and "its fields are label, content" in message
