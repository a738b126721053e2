"""A table of invalid configs: each gives one precise message, and none gets as far as a model.

Every row is a YAML config (plus `--set` overrides) that must fail in `load_config` with a
ConfigError whose message holds the listed pieces (the key, what was wrong, the fix or the
did-you-mean). The model always names a folder that does not exist, so a message about the model
would mean the config was not checked first; `lmtune train` runs a few rows end to end with model
loading patched to fail the test.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import yaml

from lmtune.config.loader import load_config
from lmtune.errors import ConfigError

D = {"path": "d.jsonl"}
CASES: list[tuple[str, dict[str, Any], list[str], list[str]]] = [
    # id, config, --set overrides, pieces the message must hold
    ("wrong-type", {"data": D, "train": {"lr": "fast"}}, [], ["train.lr", "valid number", "'fast'"]),
    ("wrong-type-section", {"data": "d.jsonl"}, [], ["data:", "dictionary", "'d.jsonl'"]),
    ("wrong-type-list", {"data": {**D, "columns": ["a"]}}, [], ["data.columns", "dictionary"]),
    ("union-type", {"data": D, "train": {"bf16": "maybe"}}, [], ["train.bf16", "valid boolean or 'auto'"]),
    ("synonym", {"data": D, "train": {"learning_rate": 1e-4}}, [], ["'train.learning_rate'", "Did you mean 'train.lr'?"]),
    ("typo-key", {"data": {**D, "max_lenght": 512}}, [], ["'data.max_lenght'", "Did you mean 'data.max_length'?"]),
    ("typo-section", {"data": D, "trian": {"lr": 1e-4}}, [], ["unknown key 'trian'", "Did you mean 'train'?"]),
    ("llama-factory-key", {"data": D, "method": {"lora_rank": 8}}, [], ["Did you mean 'method.r'?"]),
    ("choice-typo", {"data": D, "method": {"name": "lorra"}}, [], ["method.name", "Did you mean 'lora'?"]),
    ("task-typo", {"task": "sfft", "data": D}, [], ["task:", "Did you mean 'sft'?"]),
    ("range-dropout", {"data": D, "method": {"dropout": 1.5}}, [], ["method.dropout", "less than 1", "1.5"]),
    ("range-warmup", {"data": D, "train": {"warmup_ratio": 1}}, [], ["train.warmup_ratio", "less than 1"]),
    ("range-max-length", {"data": {**D, "max_length": 4}}, [], ["data.max_length", "greater than or equal to 8"]),
    ("range-rank", {"data": D, "method": {"r": 0}}, [], ["method.r", "greater than or equal to 1"]),
    ("range-nan", {"data": D, "train": {"lr": float("nan")}}, [], ["train.lr", "greater than 0", "nan"]),
    ("range-negative-val", {"data": {**D, "val_size": -0.1}}, [], ["data.val_size", "-0.1"]),
    ("range-epochs", {"data": D, "train": {"epochs": 0}}, [], ["train.epochs", "greater than 0"]),
    ("method-option", {"data": D, "method": {"name": "full", "r": 8}}, [], ["method.r applies to lora, qlora", "method.name=full"]),
    ("quant-on-full", {"data": D, "method": {"name": "full", "bits": 8}}, [], ["method.bits", "cannot train quantized weights"]),
    ("prompt-init", {"data": D, "method": {"name": "prompt", "prompt_init": "text"}}, [], ["prompt_init_text"]),
    ("prefix-packing", {"data": {**D, "packing": True}, "method": {"name": "prefix"}}, [], ["data.packing: true", "prefix"]),
    ("prefix-checkpointing", {"data": D, "method": {"name": "prefix"}, "train": {"gradient_checkpointing": True}}, [], ["gradient_checkpointing", "prefix"]),
    ("preference-on-sft", {"data": D, "preference": {"beta": 0.5}}, [], ["preference section applies to task: preference"]),
    ("rl-on-sft", {"data": D, "rl": {"num_generations": 8}}, [], ["rl section applies to task: grpo or rloo"]),
    ("format-of-other-task", {"task": "classification", "data": {**D, "format": "openai"}}, [], ["data.format: openai is a format of task: sft", "Set task: sft"]),
    ("kto-format-on-sft", {"data": {**D, "format": "kto"}}, [], ["kto is a format of task: preference", "auto, openai"]),
    ("dataset-entry-format", {"task": "pretrain", "data": {"datasets": [{"path": "a.jsonl", "format": "alpaca"}]}}, [], ["data.datasets[0].format: alpaca", "task: sft"]),
    ("labels-on-sft", {"data": {**D, "labels": ["a", "b"]}}, [], ["data.labels", "task: classification"]),
    ("text-split-on-sft", {"data": {**D, "text_split": "line"}}, [], ["data.text_split", "task: pretrain"]),
    ("eval-on-classification", {"task": "classification", "data": D, "eval": {"path": "e.jsonl"}}, [], ["eval.path", "classification"]),
    ("no-data", {"train": {"lr": 1e-4}}, [], ["data.path", "data.datasets", "required"]),
    ("path-and-datasets", {"data": {**D, "datasets": ["e.jsonl"]}}, [], ["not both"]),
    ("registry-name-without-registry", {"data": {"datasets": [{"name": "alpaca_en"}]}}, [], ["data.registry is not set"]),
    ("entry-path-and-name", {"data": {"datasets": [{"path": "a.jsonl", "name": "b"}]}}, [], ["exactly one of path"]),
    ("unknown-metric", {"data": D, "eval": {"metrics": ["acc"]}}, [], ["unknown metric", "'acc'"]),
    ("grpo-without-rewards", {"task": "grpo", "data": D}, [], ["rl.rewards"]),
    ("grpo-batch", {"task": "grpo", "data": D, "rl": {"rewards": [{"reward": "numeric_match"}], "num_generations": 3}}, [], ["multiple of rl.num_generations (3)"]),
    ("override-typo", {"data": D}, ["train.lr_rate=1e-4"], ["'train.lr_rate'", "Did you mean 'train.lr'?"]),
    ("override-without-section", {"data": D}, ["lr=1e-4"], ["name a section and a key", "train.lr=1e-4"]),
    ("override-without-value", {"data": D}, ["train.lr"], ["section.key=value"]),
    ("override-wrong-type", {"data": D}, ["train.batch_size=big"], ["train.batch_size", "valid integer", "'big'"]),
]  # fmt: skip


def _write(tmp_path, config: dict[str, Any]) -> str:
    config = {**config, "model": {"name": str(tmp_path / "no" / "such" / "model")}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize(("config", "overrides", "pieces"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_config_gives_one_precise_message(tmp_path, config, overrides, pieces):
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, config), overrides)
    message = str(caught.value)
    assert "\n" not in message, message  # one mistake, one line
    for piece in pieces:
        assert piece in message, (piece, message)
    assert "model" not in message.replace("method", "") or "model:" not in message


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("data:\n  path: d.jsonl\n train: {lr: 1}\n", ["invalid YAML", "line 3, column 2", "indentation"]),
        ("data:\n\tpath: d.jsonl\n", ["invalid YAML", "'\\t'", "line 2, column 1"]),
        ("data: {path: d.jsonl\n", ["invalid YAML", "expected ',' or '}'"]),
        ("- data\n- train\n", ["expected a mapping of sections"]),
    ],
    ids=["indentation", "tab", "unclosed-brace", "a-list"],
)
def test_unreadable_yaml_is_one_line(tmp_path, text, pieces):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    for piece in pieces:
        assert piece in message, (piece, message)


def test_several_mistakes_are_listed_one_per_line(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, {"data": D, "train": {"lr": -1, "epochs": 0}}))
    lines = str(caught.value).splitlines()
    assert lines[0].endswith("invalid configuration:") and len(lines) == 3
    assert any("train.lr" in x for x in lines) and any("train.epochs" in x for x in lines)


TRAIN_ROWS = ["wrong-type", "method-option", "format-of-other-task", "labels-on-sft"]


@pytest.mark.parametrize("case", TRAIN_ROWS)
def test_lmtune_train_reports_the_config_before_any_model(case, tmp_path, monkeypatch, capsys):
    """`lmtune train` on a bad config whose model folder does not exist: the config message, one line,
    exit 2, and nothing tried to load a model or tokenizer."""
    from lmtune.cli.app import main
    from lmtune.train.session import Session

    config, overrides, pieces = next(c[1:] for c in CASES if c[0] == case)
    (tmp_path / "d.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n'
    )
    loads: list[str] = []

    def refuse(*args: Any, **kw: Any) -> Any:
        loads.append("model")
        raise AssertionError("model loaded before the config was checked")

    for name in ("load_model", "load_tokenizer", "model_ref", "__init__"):
        monkeypatch.setattr(Session, name, refuse)
    monkeypatch.setattr(sys, "argv", ["lmtune", "train", _write(tmp_path, config)])
    monkeypatch.setenv("COLUMNS", "10000")
    monkeypatch.setenv("LMTUNE_DEBUG", "0")
    with pytest.raises(SystemExit) as done:
        main()
    err = capsys.readouterr().err
    assert done.value.code == 2 and not loads
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for piece in pieces:
        assert piece in lines[0], (piece, err)


def test_preference_loss_options_stop_before_any_model(tmp_path, monkeypatch, capsys):
    """Options checked by the preference trainer itself (kto needs batches of 2+) still come first."""
    from lmtune.cli.app import main
    from lmtune.train.session import Session

    loads: list[str] = []
    for name in ("__init__", "load_model", "load_tokenizer"):
        monkeypatch.setattr(Session, name, lambda *a, **k: loads.append("model"))
    cfg = {"task": "preference", "data": D, "preference": {"loss": "kto"}, "train": {"batch_size": 1}}
    monkeypatch.setattr(sys, "argv", ["lmtune", "train", _write(tmp_path, cfg)])
    monkeypatch.setenv("COLUMNS", "10000")
    monkeypatch.setenv("LMTUNE_DEBUG", "0")
    with pytest.raises(SystemExit) as done:
        main()
    err = capsys.readouterr().err
    assert done.value.code == 2 and not loads
    assert "kto needs train.batch_size >= 2" in err and len(err.strip().splitlines()) == 1
