"""task: pretrain end to end on a tiny random Llama and a few KB of Tiny Shakespeare: the loss
falls, perplexity is exp(validation loss), validation text never shares a block with training
text, and the run directory loads back to the same logits."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from rich.console import Console
from typer.testing import CliRunner

from lmtune.cli.app import app
from lmtune.config.loader import load_config, validate_config
from lmtune.data.text import load_texts
from lmtune.errors import DataError
from lmtune.run.layout import read_marker
from lmtune.run.load import load_target
from lmtune.train.pretrain import perplexity
from lmtune.train.pretrain_data import load_pretrain_data
from lmtune.train.runner import train

MAX_LENGTH = 64


@pytest.fixture(scope="module")
def shakespeare_text(shared_data) -> str:
    return (shared_data / "pretrain_tinyshakespeare" / "input.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def shake_file(shakespeare_text, tmp_path_factory):
    path = tmp_path_factory.mktemp("pretrain") / "shake.txt"
    path.write_text(shakespeare_text[:6000], encoding="utf-8")
    return path


def config(model_dir, data: dict, out, **train_opts):
    return validate_config(
        {
            "task": "pretrain",
            "model": {"name": str(model_dir)},
            "data": {"max_length": MAX_LENGTH, **data},
            "method": {"name": "lora", "r": 8},
            "train": {
                "max_steps": 6,
                "lr": 1e-2,
                "batch_size": 4,
                "log_steps": 1,
                "bf16": False,
                **train_opts,
            },
            "output": {"dir": str(out)},
        }
    )


@pytest.fixture(scope="module")
def pretrain_run(tiny_model_dir, shake_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pretrain"
    return train(config(tiny_model_dir, {"path": str(shake_file), "val_size": 0.2}, out))


def test_loss_falls_and_perplexity_is_exp_of_validation_loss(pretrain_run):
    s = pretrain_run.summary
    assert s["task"] == "pretrain" and s["steps"] == 6
    assert s["train_loss"]["last"] < s["train_loss"]["first"] - 1.0
    before, after = s["eval_loss"]["before"], s["eval_loss"]["after"]
    assert after < before
    ppl = s["metrics"]["perplexity"]
    assert ppl["before"] == pytest.approx(math.exp(before)) and ppl["after"] == pytest.approx(math.exp(after))
    assert ppl["after"] < ppl["before"]
    md = (pretrain_run.run_dir / "summary.md").read_text()
    assert "| perplexity (before / after) |" in md


def test_one_document_is_split_by_blocks_covering_every_token(pretrain_run, shake_file, smollm2_tokenizer):
    stats = json.loads((pretrain_run.run_dir / "data_stats.json").read_text())
    stream = len(smollm2_tokenizer(shake_file.read_text())["input_ids"]) + 1  # + eos
    blocks = -(-stream // MAX_LENGTH)
    assert stats["val_split"] == "blocks"
    assert stats["train"]["blocks"] + stats["validation"]["blocks"] == blocks
    assert stats["validation"]["blocks"] == round(0.2 * blocks)
    assert stats["train"]["tokens"] + stats["validation"]["tokens"] == stream
    assert stats["train"]["documents"] == 1
    s = pretrain_run.summary["data"]
    assert (s["train_samples"], s["val_samples"]) == (stats["train"]["blocks"], stats["validation"]["blocks"])
    assert read_marker(pretrain_run.run_dir)["task"] == "pretrain"


def test_run_directory_loads_to_the_same_logits(pretrain_run, smollm2_tokenizer):
    ids = smollm2_tokenizer("Before we proceed any further, hear me speak.", return_tensors="pt")
    trained = pretrain_run.model
    trained.eval()
    loaded = load_target(str(pretrain_run.run_dir), quiet=True)
    with torch.no_grad():
        expected = trained(**ids).logits
        got = loaded.model(**ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert loaded.tokenizer("hear me")["input_ids"] == smollm2_tokenizer("hear me")["input_ids"]


def stub_session(data: dict, tmp_path: Path) -> SimpleNamespace:
    """What load_pretrain_data uses of a Session (its own cache folder, so the first call builds)."""
    cfg = validate_config({"task": "pretrain", "data": {"path": "x.txt", "max_length": MAX_LENGTH, **data}})
    return SimpleNamespace(
        cfg=cfg,
        console=Console(file=io.StringIO(), width=200),
        run=SimpleNamespace(rejects=tmp_path / "rejects.jsonl"),
        main_first=lambda fn: fn(),
    )


def segments(blocks, eos: int) -> Counter:
    """The documents a block set holds, as token tuples (each document ends with eos)."""
    stream = [t for i in range(len(blocks)) for t in blocks[i]["input_ids"]]
    assert stream[-1] == eos
    out, cur = Counter(), []
    for t in stream:
        if t == eos:
            out[tuple(cur)] += 1
            cur = []
        else:
            cur.append(t)
    return out


def test_several_documents_are_split_whole(shake_file, smollm2_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("LMTUNE_CACHE", str(tmp_path / "cache"))
    docs = load_texts(shake_file, text_split="line", limit=40).records
    s = stub_session({"path": str(shake_file), "val_size": 0.25, "text_split": "line", "limit": 40}, tmp_path)
    data = load_pretrain_data(s, smollm2_tokenizer)
    train_set, val_set, how = data.train, data.val, data.split
    assert how == "documents" and "10 of 40 documents" in s.console.file.getvalue()
    eos = smollm2_tokenizer.eos_token_id
    val_docs, train_docs = segments(val_set, eos), segments(train_set, eos)
    every = Counter(tuple(smollm2_tokenizer(d.text)["input_ids"]) for d in docs)
    assert sum(val_docs.values()) == 10 and sum(train_docs.values()) == 30
    assert val_docs + train_docs == every  # each document whole, in exactly one of the two


def test_one_short_document_cannot_be_split(smollm2_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("LMTUNE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "x.txt").write_text("Too short.", encoding="utf-8")
    s = stub_session({"path": str(tmp_path / "x.txt"), "val_size": 0.1}, tmp_path)
    with pytest.raises(DataError, match="val_size needs a second block") as err:
        load_pretrain_data(s, smollm2_tokenizer)
    assert "x.txt" in str(err.value) and "max_length" in str(err.value)


def test_perplexity():
    assert perplexity(None) is None
    assert perplexity(math.log(20.0)) == pytest.approx(20.0)
    assert perplexity(1000.0) == math.inf


def test_cli_line_mode_with_a_validation_file(tiny_model_dir, shakespeare_text, tmp_path):
    (tmp_path / "train.txt").write_text(shakespeare_text[:3000], encoding="utf-8")
    (tmp_path / "val.txt").write_text(shakespeare_text[3000:4000], encoding="utf-8")
    cfg = {
        "model": {"name": str(tiny_model_dir)},
        "data": {"path": "train.txt", "val_path": "val.txt", "text_split": "line", "max_length": MAX_LENGTH},
        "method": {"name": "lora", "r": 4},
        "train": {"max_steps": 2, "batch_size": 4, "bf16": False},
        "output": {"dir": str(tmp_path / "run")},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml"), "--set", "task=pretrain"])
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    lines = [ln for ln in shakespeare_text[3000:4000].split("\n") if ln.strip()]
    assert stats["val_split"] == "file" and stats["validation"]["documents"] == len(lines)
    ppl = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]["perplexity"]
    assert ppl["before"] > 0 and ppl["after"] > 0


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pretrain.yaml"


def test_example_config_reads_its_handbook():
    cfg = load_config(EXAMPLE)
    assert cfg.task == "pretrain" and cfg.data.text_split == "line"
    path = Path(cfg.data.path)
    paragraphs = [ln for ln in path.read_text(encoding="utf-8").split("\n") if ln.strip()]
    docs = load_texts(path, text_split=cfg.data.text_split).records
    assert [d.text for d in docs] == paragraphs and len(docs) > int(cfg.data.val_size)


@pytest.mark.slow
@pytest.mark.realmodel
def test_example_lowers_held_out_perplexity(tmp_path):
    """examples/pretrain.yaml with SmolLM2-135M (about 2-10 minutes on 2 cores)."""
    out = tmp_path / "pretrain"
    result = train(load_config(EXAMPLE, [f"output.dir={out}"]))
    ppl = result.summary["metrics"]["perplexity"]
    assert ppl["after"] < 0.8 * ppl["before"]
