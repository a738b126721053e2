"""Several training files: read with their own format/columns, mixed as data.mix says, each
file's counts reported; relative paths follow the config file; a full SFT run on registry entries
records the per-dataset counts in data_stats.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lmtune.config.loader import load_config, validate_config
from lmtune.data.sources import load_sources, training_specs


@pytest.fixture()
def two_files(tmp_path) -> tuple[Path, Path]:
    chats = tmp_path / "chats.jsonl"
    lines = [
        json.dumps(
            {"messages": [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        )
        for i in range(6)
    ]
    lines.insert(3, '{"messages": [{"role": "user", "content": "no answer"}]}')  # rejected: no assistant turn
    chats.write_text("\n".join(lines) + "\n")
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps([{"question": f"q{i}", "answer": f"r{i}"} for i in range(4)]))
    return chats, qa


def data_section(datasets, **extra):
    return validate_config({"data": {"datasets": datasets, **extra}}).data


def pairs(records) -> list[tuple[str, str]]:
    return [(c.messages[-2].content, c.messages[-1].content) for c in records]


def test_concat_with_weights_reports_each_file(two_files):
    chats, qa = two_files
    data = data_section(
        [
            {"path": str(chats)},
            {"path": str(qa), "format": "alpaca", "columns": {"instruction": "question", "output": "answer"},
             "weight": 2},
        ]
    )  # fmt: skip
    src = load_sources(data, "sft")
    expected_chats = [(f"u{i}", f"a{i}") for i in range(6)]
    expected_qa = [(f"q{i}", f"r{i}") for i in range(4)]
    assert pairs(src.records) == expected_chats + expected_qa + expected_qa
    assert src.per_dataset == [
        {"name": "chats.jsonl", "path": str(chats), "format": "openai", "read": 7, "usable": 6, "rejected": 1,
         "weight": 1.0, "used": 6},
        {"name": "qa.json", "path": str(qa), "format": "alpaca", "read": 4, "usable": 4, "rejected": 0,
         "weight": 2.0, "used": 8},
    ]  # fmt: skip
    assert src.total == 11 and [r.record for r in src.rejects] == [4]


@pytest.mark.parametrize("stop", ["first_exhausted", "all_exhausted"])
def test_interleave_counts_match_the_records(two_files, stop):
    chats, qa = two_files
    qa_entry = {
        "path": str(qa),
        "format": "alpaca",
        "columns": {"instruction": "question", "output": "answer"},
    }
    data = data_section(
        [{"path": str(chats), "weight": 3}, qa_entry], mix="interleave", mix_stop=stop, seed=1
    )
    src = load_sources(data, "sft")
    got = pairs(src.records)
    from_chats = [p for p in got if p[0].startswith("u")]
    from_qa = [p for p in got if p[0].startswith("q")]
    assert [row["used"] for row in src.per_dataset] == [len(from_chats), len(from_qa)]
    # each file's records in file order, restarting from the first when used up
    assert from_chats == [(f"u{i % 6}", f"a{i % 6}") for i in range(len(from_chats))]
    assert from_qa == [(f"q{i % 4}", f"r{i % 4}") for i in range(len(from_qa))]
    if stop == "all_exhausted":
        assert len(from_chats) >= 6 and len(from_qa) >= 4
    else:
        assert len(from_chats) == 6 or len(from_qa) == 4
    assert load_sources(data, "sft").records == src.records  # seeded


def test_console_reports_each_file(two_files):
    from io import StringIO

    from rich.console import Console

    chats, qa = two_files
    out = StringIO()
    qa_entry = {
        "path": str(qa),
        "format": "alpaca",
        "columns": {"instruction": "question", "output": "answer"},
    }
    load_sources(data_section([{"path": str(chats)}, qa_entry]), "sft", console=Console(file=out, width=200))
    assert out.getvalue().splitlines() == [
        "Read chats.jsonl: openai format, 6 of 7 records usable, 6 used in the mix",
        "Read qa.json: alpaca format, 4 of 4 records usable, 4 used in the mix",
    ]


def test_relative_paths_follow_the_config_file(tmp_path, two_files, monkeypatch):
    chats, _ = two_files
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "chats.jsonl").write_text(chats.read_text())
    (folder / "reg").mkdir()
    (folder / "reg" / "dataset_info.json").write_text(json.dumps({"c": {"file_name": "../data/chats.jsonl"}}))
    (folder / "run.yaml").write_text(
        yaml.safe_dump(
            {
                "data": {
                    "datasets": [{"path": "data/chats.jsonl"}, {"name": "c"}],
                    "registry": "reg/dataset_info.json",
                }
            }
        )
    )
    (folder / "plain.yaml").write_text(yaml.safe_dump({"data": {"datasets": ["data/chats.jsonl"]}}))
    monkeypatch.chdir(tmp_path)  # not the config's folder
    cfg = load_config(folder / "run.yaml")
    assert cfg.data.datasets[0].path == str(folder / "data" / "chats.jsonl")
    assert cfg.data.registry == str(folder / "reg" / "dataset_info.json")
    specs = training_specs(cfg.data, "sft")
    expected = folder / "data" / "chats.jsonl"  # the registry entry's file_name is relative to its folder
    assert [Path(s.path).resolve() for s in specs] == [expected, expected]
    assert load_config(folder / "plain.yaml").data.datasets[0].path == str(folder / "data" / "chats.jsonl")


def test_sft_run_on_registry_entries_writes_per_dataset_counts(tiny_model_dir, shared_data, tmp_path):
    from lmtune.train.runner import train

    registry = shared_data / "llamafactory" / "dataset_info.json"
    cfg = validate_config(
        {
            "model": {"name": str(tiny_model_dir)},
            "data": {
                "registry": str(registry),
                "datasets": [
                    {"name": "alpaca_en_demo", "limit": 6},
                    {"name": "glaive_toolcall_en_demo", "limit": 4},
                ],
                "max_length": 256,
            },
            "method": {"name": "lora", "r": 4},
            "train": {"max_steps": 2, "batch_size": 2, "bf16": False, "log_steps": 1},
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    result = train(cfg)
    stats = json.loads((result.run_dir / "data_stats.json").read_text())
    folder = shared_data / "llamafactory"
    assert stats["mix"] == "concat"
    assert [{k: row[k] for k in ("name", "path", "format", "read", "usable", "rejected", "used")}
            for row in stats["datasets"]] == [
        {"name": "alpaca_en_demo", "path": str(folder / "alpaca_en_demo.json"), "format": "alpaca",
         "read": 6, "usable": 6, "rejected": 0, "used": 6},
        {"name": "glaive_toolcall_en_demo", "path": str(folder / "glaive_toolcall_en_demo.json"),
         "format": "sharegpt", "read": 4, "usable": 4, "rejected": 0, "used": 4},
    ]  # fmt: skip
    assert stats["records_read"] == 10
    assert result.summary["steps"] == 2
