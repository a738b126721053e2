"""LLaMA-Factory registries: entries map to lmtune formats, fields and roles; hub and missing
entries are refused with the entry's name and the fix; SFT entries load end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtune.config.loader import validate_config
from lmtune.data.registry import registry_spec
from lmtune.data.sources import SourceSpec, load_sources
from lmtune.errors import DataError

TASKS = ("sft", "pretrain", "classification", "preference")


@pytest.fixture(scope="module")
def lf(shared_data) -> Path:
    return shared_data / "llamafactory"


@pytest.fixture(scope="module")
def registry(lf) -> Path:
    return lf / "dataset_info.json"


def spec(path: Path, label: str, fmt: str, columns: dict, roles: dict | None = None) -> SourceSpec:
    return SourceSpec(path=str(path), label=label, format=fmt, columns=columns, roles=roles or {})


@pytest.mark.parametrize(
    ("name", "task", "fmt", "columns"),
    [
        ("alpaca_en_demo", "sft", "alpaca", {}),
        ("glaive_toolcall_en_demo", "sft", "sharegpt", {"conversations": "conversations", "tools": "tools"}),
        ("dpo_en_demo", "preference", "sharegpt_ranking",
         {"conversations": "conversations", "chosen": "chosen", "rejected": "rejected"}),
        ("kto_en_demo", "preference", "kto", {"messages": "messages", "label": "label"}),
        ("c4_demo", "pretrain", "text", {"text": "text"}),
        ("alpaca_en_demo", "pretrain", "text", {"text": "instruction"}),  # LLaMA-Factory pt reads the prompt
    ],
)  # fmt: skip
def test_local_entries_resolve(registry, lf, name, task, fmt, columns):
    info = json.loads(registry.read_text())[name]
    assert (lf / info["file_name"]).is_file()
    assert registry_spec(registry, name, task) == spec(lf / info["file_name"], name, fmt, columns)


def test_every_entry_resolves_or_gives_a_data_error(registry, lf):
    """All 104 entries under every task: a spec whose file exists, or a DataError naming the entry."""
    entries = json.loads(registry.read_text())
    resolved = set()
    for name in entries:
        for task in TASKS:
            try:
                s = registry_spec(registry, name, task)
            except DataError as err:
                assert f"'{name}'" in str(err), (name, task, str(err))
            else:
                assert Path(s.path).is_file() and s.label == name
                resolved.add(name)
    local = {n for n, e in entries.items() if "file_name" in e and (lf / e["file_name"]).is_file()}
    assert (
        resolved
        == local
        == {"alpaca_en_demo", "glaive_toolcall_en_demo", "dpo_en_demo", "kto_en_demo", "c4_demo"}
    )


@pytest.mark.parametrize("name", ["alpaca_en", "glaive_toolcall_en", "dpo_mix_en", "deepctrl"])
def test_hub_entries_are_refused_with_the_fix(registry, name):
    info = json.loads(registry.read_text())[name]
    with pytest.raises(DataError) as err:
        registry_spec(registry, name, "sft")
    msg = str(err.value)
    assert f"entry '{name}' points to a hub" in msg and "does not download" in msg
    assert '"file_name"' in msg  # the fix: download and add file_name
    for key in ("hf_hub_url", "ms_hub_url", "om_hub_url"):
        if key in info:
            assert f"{key}: {info[key]}" in msg
    if "subset" in info:
        assert f"subset {info['subset']!r}" in msg


@pytest.mark.parametrize("name", ["identity", "alpaca_zh_demo", "wiki_demo"])
def test_missing_files_name_the_entry_and_the_path(registry, lf, name):
    file_name = json.loads(registry.read_text())[name]["file_name"]
    with pytest.raises(DataError) as err:
        registry_spec(registry, name, "pretrain" if name == "wiki_demo" else "sft")
    msg = str(err.value)
    assert f"entry '{name}'" in msg and str(lf / file_name) in msg and "does not exist" in msg


def test_unknown_entry_lists_close_matches(registry):
    with pytest.raises(DataError, match="no entry 'alpaca_en_dem'. Close matches: alpaca_en_demo"):
        registry_spec(registry, "alpaca_en_dem")


@pytest.mark.parametrize(
    ("name", "task", "hint"),
    [
        ("dpo_en_demo", "sft", "use task: preference"),
        ("kto_en_demo", "sft", "preference.loss: kto"),
        ("c4_demo", "sft", "use task: pretrain"),
        ("alpaca_en_demo", "preference", "use task: sft"),
        ("glaive_toolcall_en_demo", "pretrain", "raw text"),
        ("alpaca_en_demo", "classification", "no classification data"),
    ],
)
def test_entry_must_fit_the_task(registry, name, task, hint):
    with pytest.raises(DataError, match=f"'{name}'") as err:
        registry_spec(registry, name, task)
    assert hint in str(err.value)


def test_bad_registry_files(tmp_path):
    with pytest.raises(DataError, match="registry file does not exist"):
        registry_spec(tmp_path / "nope.json", "x")
    bad = tmp_path / "dataset_info.json"
    bad.write_text('{"a": {"file_name": "a.json"},\n}')
    with pytest.raises(DataError, match="not valid JSON") as err:
        registry_spec(bad, "a")
    assert err.value.line == 2
    bad.write_text("[1, 2]")
    with pytest.raises(DataError, match="JSON object of entries"):
        registry_spec(bad, "a")


def make_registry(folder: Path, entries: dict, files: dict[str, list]) -> Path:
    for name, records in files.items():
        (folder / name).write_text(json.dumps(records), encoding="utf-8")
    path = folder / "dataset_info.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def sft_data(registry: Path, *datasets, **extra):
    raw = {"registry": str(registry), "datasets": list(datasets), **extra}
    return validate_config({"data": raw}).data


CUSTOM = [
    {
        "dialog": [
            {"speaker": "S", "text": "Be short."},
            {"speaker": "Q", "text": "Capital of France?"},
            {"speaker": "A", "text": "Paris."},
            {"speaker": "Q", "text": "And Italy?"},
            {"speaker": "A", "text": "Rome."},
        ],
        "sys": "",
    },
    {"dialog": [{"speaker": "Q", "text": "2+2?"}, {"speaker": "A", "text": "4"}], "sys": "Math tutor."},
    {"dialog": [{"speaker": "Q", "text": "hi"}, {"speaker": "Bot", "text": "hello"}], "sys": ""},
]


def test_tags_map_to_roles_and_turn_keys(tmp_path):
    entry = {
        "file_name": "custom.json",
        "formatting": "sharegpt",
        "columns": {"messages": "dialog", "system": "sys"},
        "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "Q", "assistant_tag": "A",
                 "system_tag": "S", "observation_tag": "observation"},
    }  # fmt: skip
    reg = make_registry(tmp_path, {"custom": entry}, {"custom.json": CUSTOM})
    s = registry_spec(reg, "custom")
    assert s.format == "sharegpt"
    assert s.columns == {"conversations": "dialog", "from": "speaker", "value": "text", "system": "sys"}
    assert s.roles == {"user": "Q", "assistant": "A", "system": "S"}  # observation is understood anyway

    src = load_sources(sft_data(reg, "custom"), "sft")
    assert src.per_dataset[0]["read"] == 3 and src.per_dataset[0]["usable"] == 2
    first, second = ([(m.role, m.content) for m in c.messages] for c in src.records)
    assert first == [("system", "Be short."), ("user", "Capital of France?"), ("assistant", "Paris."),
                     ("user", "And Italy?"), ("assistant", "Rome.")]  # fmt: skip
    assert second == [("system", "Math tutor."), ("user", "2+2?"), ("assistant", "4")]
    (reject,) = src.rejects  # a speaker in neither the tags nor the usual names
    assert reject.reason == "unknown_role" and reject.record == 3 and "'Bot'" in reject.message


def test_role_content_tags_like_the_mllm_entries(tmp_path):
    records = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    ] * 4
    entry = {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"messages": "messages"},
             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}  # fmt: skip
    reg = make_registry(tmp_path, {"chat": entry}, {"chat.json": records})
    s = registry_spec(reg, "chat")
    assert (s.format, s.columns, s.roles) == ("sharegpt", {"conversations": "messages"}, {})
    src = load_sources(sft_data(reg, "chat"), "sft")
    assert len(src.records) == 4
    assert [(m.role, m.content) for m in src.records[0].messages] == [("user", "Hi"), ("assistant", "Hello")]


def test_config_entry_overrides_the_registry(tmp_path, lf):
    reg = make_registry(tmp_path, {"qa": {"file_name": "qa.json", "columns": {"prompt": "q", "response": "a"},
                                          "num_samples": 3}}, {"qa.json": [{"q": f"Q{i}", "a": f"A{i}", "ctx": "c"} for i in range(5)]})  # fmt: skip
    assert registry_spec(reg, "qa").limit == 3  # num_samples: the first N records
    data = sft_data(
        reg, {"name": "qa", "columns": {"input": "ctx"}, "system": "Be kind.", "limit": 4, "weight": 2}
    )
    s = registry_spec(reg, data.datasets[0])
    assert s == SourceSpec(str(tmp_path / "qa.json"), "qa", "alpaca", {"instruction": "q", "output": "a", "input": "ctx"},
                           {}, "Be kind.", 4, 2.0)  # fmt: skip
    src = load_sources(data, "sft")
    assert src.per_dataset[0]["used"] == 8 and len(src.records) == 8  # 4 records, weight 2
    assert [(m.role, m.content) for m in src.records[0].messages] == [
        ("system", "Be kind."), ("user", "Q0\n\nc"), ("assistant", "A0")]  # fmt: skip


def test_data_level_system_and_limit_apply_to_registry_entries(registry):
    data = sft_data(registry, "alpaca_en_demo", limit=5, system="You are terse.")
    src = load_sources(data, "sft")
    assert len(src.records) == 5
    assert all(c.messages[0].content == "You are terse." for c in src.records)


@pytest.mark.parametrize(
    ("entry", "task", "fmt", "columns", "roles"),
    [
        ({"ranking": True, "columns": {"prompt": "question", "chosen": "good", "rejected": "bad", "system": "sys"}},
         "preference", "preference", {"prompt": "question", "chosen": "good", "rejected": "bad", "system": "sys"}, {}),
        ({"ranking": True}, "preference", "preference", {"prompt": "instruction"}, {}),
        ({"columns": {"prompt": "prompt", "response": "completion", "kto_tag": "label"}},
         "preference", "kto", {"prompt": "prompt", "completion": "completion", "label": "label"}, {}),
        ({"formatting": "sharegpt", "ranking": True, "columns": {"messages": "conv", "chosen": "c", "rejected": "r"},
          "tags": {"user_tag": "Q", "assistant_tag": "A"}},
         "preference", "sharegpt_ranking", {"conversations": "conv", "chosen": "c", "rejected": "r"},
         {"user": "Q", "assistant": "A"}),
        ({"formatting": "sharegpt", "columns": {"messages": "completion", "kto_tag": "label"},
          "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
         "preference", "kto", {"messages": "completion", "label": "label"}, {}),
        ({"formatting": "sharegpt", "columns": {"messages": "msgs", "kto_tag": "ok"},
          "tags": {"role_tag": "who", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"}},
         "preference", "kto", {"messages": "msgs", "role": "who", "content": "text", "label": "ok"},
         {"user": "me", "assistant": "bot"}),
        ({"formatting": "openai", "columns": {"messages": "messages", "tools": "tools"},
          "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                   "observation_tag": "tool", "system_tag": "system"}},
         "sft", "openai", {"messages": "messages", "tools": "tools"}, {}),
        ({"formatting": "openai", "columns": {"messages": "msgs"},
          "tags": {"role_tag": "who", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"}},
         "sft", "sharegpt", {"conversations": "msgs", "from": "who", "value": "text"}, {"user": "me", "assistant": "bot"}),
        ({"columns": {"prompt": "q", "query": "ctx", "response": "a", "history": "h", "system": "s", "tools": "t"}},
         "sft", "alpaca", {"instruction": "q", "input": "ctx", "output": "a", "history": "h", "system": "s", "tools": "t"}, {}),
        ({"columns": {"prompt": "content"}}, "pretrain", "text", {"text": "content"}, {}),
    ],
)  # fmt: skip
def test_entry_mapping(tmp_path, entry, task, fmt, columns, roles):
    reg = make_registry(tmp_path, {"e": {"file_name": "e.json", **entry}}, {"e.json": [{}]})
    s = registry_spec(reg, "e", task)
    assert (s.format, s.columns, s.roles) == (fmt, columns, roles)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"file_name": "folder"}, "points to a folder"),
        ({"file_name": "e.json", "subset": "en"}, "selects subset 'en'"),
        ({"file_name": "e.json", "split": "test"}, "selects split 'test'"),
        ({"file_name": "e.json", "formatting": "sharegpt", "columns": {"messages": "m", "images": "img"}},
         "images (columns.images): lmtune trains text-only models"),
        ({"file_name": "e.json", "formatting": "parquet"}, "unknown formatting 'parquet'"),
        ({"file_name": "e.json", "columns": {"promt": "q"}}, "unknown columns key 'promt'. Did you mean 'prompt'?"),
        ({"file_name": "e.json", "tags": {"user": "q"}}, "unknown tags key 'user'"),
        ({"formatting": "alpaca"}, "has no file_name"),
    ],
)  # fmt: skip
def test_entries_lmtune_cannot_read(tmp_path, entry, message):
    (tmp_path / "folder").mkdir()
    reg = make_registry(tmp_path, {"e": entry}, {"e.json": [{}]})
    with pytest.raises(DataError, match="entry 'e'") as err:
        registry_spec(reg, "e", "sft")
    assert message in str(err.value)


def test_sft_entries_load_end_to_end(registry, lf):
    data = sft_data(registry, "alpaca_en_demo", "glaive_toolcall_en_demo")
    src = load_sources(data, "sft")
    alpaca = json.loads((lf / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    glaive = json.loads((lf / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    rows = {r["name"]: r for r in src.per_dataset}
    assert rows["alpaca_en_demo"]["read"] == len(alpaca) == 999
    assert rows["glaive_toolcall_en_demo"]["read"] == len(glaive) == 300
    for row in rows.values():
        assert row["usable"] + row["rejected"] == row["read"] and row["used"] == row["usable"]
    assert len(src.records) == sum(r["usable"] for r in rows.values())
    assert src.formats == ["alpaca", "sharegpt"]
    calls = sum(t["from"] == "function_call" for r in glaive for t in r["conversations"])
    assert sum(len(m.tool_calls or []) for c in src.records for m in c.messages) == calls


@pytest.mark.parametrize(
    ("task", "name", "fmt"),
    [("preference", "dpo_en_demo", "sharegpt_ranking"), ("preference", "kto_en_demo", "kto"),
     ("pretrain", "c4_demo", "text")],
)  # fmt: skip
def test_other_task_entries_load_with_their_task_loader(registry, lf, task, name, fmt):
    file = lf / json.loads(registry.read_text())[name]["file_name"]
    text = file.read_text(encoding="utf-8")
    count = len(json.loads(text)) if file.suffix == ".json" else len(text.splitlines())
    data = validate_config({"task": task, "data": {"registry": str(registry), "datasets": [name]}}).data
    (row,) = load_sources(data, task).per_dataset
    assert (row["format"], row["read"], row["usable"]) == (fmt, count, count)
