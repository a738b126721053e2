"""Preference data: every shared file loads with the right counts and prompt/answer split
(checked against the raw JSON), the shapes agree with each other, and bad records are rejects."""

from __future__ import annotations

import itertools
import json

import pytest

from lmtune.data.preference import KtoExample, PreferencePair, load_preferences, pairs_to_kto
from lmtune.errors import DataError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


# ---------------------------------------------------------------- the shared files


def test_hh_rlhf_prompt_is_the_common_prefix(shared_data):
    path = shared_data / "torchtune_tiny_assets" / "hh_rlhf_tiny.json"
    raw = json.loads(path.read_text())
    result = load_preferences(path)
    assert result.format == "preference" and result.total == len(raw) == len(result.records)
    for rec, row in zip(result.records, raw):
        chosen = [{"role": m["role"], "content": m["content"]} for m in row["chosen"]]
        rejected = [{"role": m["role"], "content": m["content"]} for m in row["rejected"]]
        prefix = list(itertools.takewhile(lambda ab: ab[0] == ab[1], zip(chosen, rejected)))
        prefix = [a for a, _ in prefix]
        assert prefix and rec.prompt == prefix
        assert rec.chosen == chosen[len(prefix) :] and rec.rejected == rejected[len(prefix) :]
        assert rec.source == "hh_rlhf_tiny.json#1"


@pytest.mark.parametrize(
    "columns", [None, {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}]
)
def test_stack_exchange_paired(shared_data, columns):
    path = shared_data / "torchtune_tiny_assets" / "stack_exchange_paired_tiny.json"
    raw = json.loads(path.read_text())
    result = load_preferences(path, columns=columns)
    assert len(result.records) == len(raw) == 25 and not result.rejects
    for rec, row in zip(result.records, raw):
        assert rec.prompt == [user(row["question"])]
        assert rec.chosen == [bot(row["response_j"])] and rec.rejected == [bot(row["response_k"])]


def test_llamafactory_sharegpt_ranking(shared_data):
    path = shared_data / "llamafactory" / "dpo_en_demo.json"
    raw = json.loads(path.read_text())
    result = load_preferences(path)
    assert result.format == "sharegpt_ranking" and len(result.records) == len(raw) == 300
    names = {"human": "user", "gpt": "assistant", "system": "system"}
    for rec, row in zip(result.records, raw):
        assert [m["role"] for m in rec.prompt] == [names[t["from"]] for t in row["conversations"]]
        assert [m["content"] for m in rec.prompt] == [t["value"] for t in row["conversations"]]
        assert rec.chosen == [bot(row["chosen"]["value"])] and rec.rejected == [bot(row["rejected"]["value"])]
    with_system = sum(row["conversations"][0]["from"] == "system" for row in raw)
    assert with_system > 0 and sum(r.prompt[0]["role"] == "system" for r in result.records) == with_system


def test_llamafactory_kto(shared_data):
    path = shared_data / "llamafactory" / "kto_en_demo.json"
    raw = json.loads(path.read_text())
    result = load_preferences(path)
    assert result.format == "kto" and len(result.records) == len(raw)
    assert all(isinstance(r, KtoExample) for r in result.records)
    assert sum(r.label for r in result.records) == sum(row["label"] is True for row in raw)
    for rec, row in zip(result.records, raw):
        assert rec.completion == [row["messages"][-1]] and rec.prompt == row["messages"][:-1]


def test_openai_preference(shared_data):
    path = shared_data / "dpo_openai_orca_msfoundry" / "validation.jsonl"
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    result = load_preferences(path)
    assert result.format == "openai_preference" and len(result.records) == len(raw) == 284
    for rec, row in zip(result.records, raw):
        assert rec.prompt == row["input"]["messages"]
        assert rec.chosen == row["preferred_output"] and rec.rejected == row["non_preferred_output"]


# ---------------------------------------------------------------- shapes agree


def test_strings_messages_and_transcripts_give_the_same_pair(tmp_path):
    q, good, bad = "Who are you?", "I am Quill.", "I am nobody."
    rows = [
        {"prompt": q, "chosen": good, "rejected": bad},
        {"prompt": [user(q)], "chosen": [bot(good)], "rejected": [bot(bad)]},
        {"chosen": [user(q), bot(good)], "rejected": [user(q), bot(bad)]},  # HH style
        {"prompt": [user(q)], "chosen": [user(q), bot(good)], "rejected": [user(q), bot(bad)]},  # prompt repeated
        {"conversations": [{"from": "human", "value": q}], "chosen": {"from": "gpt", "value": good},
         "rejected": {"from": "gpt", "value": bad}},
    ]  # fmt: skip
    pairs = []
    for i, row in enumerate(rows):
        fmt = "sharegpt_ranking" if "conversations" in row else "auto"
        pairs += load_preferences(write_jsonl(tmp_path / f"{i}.jsonl", [row]), format=fmt).records
    assert all(isinstance(p, PreferencePair) for p in pairs)
    assert all((p.prompt, p.chosen, p.rejected) == ([user(q)], [bot(good)], [bot(bad)]) for p in pairs)


def test_multi_turn_transcripts_split_at_the_last_shared_turn(tmp_path):
    head = [{"role": "system", "content": "Be brief."}, user("Hi"), bot("Hello!"), user("Name?")]
    row = {"chosen": [*head, bot("Quill.")], "rejected": [*head, bot("No idea.")]}
    (rec,) = load_preferences(write_jsonl(tmp_path / "d.jsonl", [row])).records
    assert rec.prompt == head and rec.chosen == [bot("Quill.")] and rec.rejected == [bot("No idea.")]


def test_system_prompt_is_added_only_when_absent(tmp_path):
    rows = [{"prompt": "Q", "chosen": "A", "rejected": "B"},
            {"prompt": [{"role": "system", "content": "own"}, user("Q")], "chosen": "A", "rejected": "B"},
            {"prompt": "Q", "chosen": "A", "rejected": "B", "system": "field"}]  # fmt: skip
    recs = load_preferences(write_jsonl(tmp_path / "d.jsonl", rows), system="default").records
    assert [r.prompt[0]["content"] for r in recs] == ["default", "own", "field"]
    assert [sum(m["role"] == "system" for m in r.prompt) for r in recs] == [1, 1, 1]


def test_sharegpt_ranking_honours_roles_and_columns(tmp_path):
    row = {"dialog": [{"speaker": "asker", "text": "Q"}], "chosen": {"speaker": "helper", "text": "A"},
           "rejected": {"speaker": "helper", "text": "B"}}  # fmt: skip
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    result = load_preferences(
        path,
        format="sharegpt_ranking",
        columns={"conversations": "dialog", "from": "speaker", "value": "text"},
        roles={"user": "asker", "assistant": "helper"},
    )
    (rec,) = result.records
    assert (rec.prompt, rec.chosen, rec.rejected) == ([user("Q")], [bot("A")], [bot("B")])
    # without `roles` the speakers are unknown: with on_error fail, an error naming record and field
    cols = {"conversations": "dialog", "from": "speaker", "value": "text"}
    with pytest.raises(DataError, match=r"record 1, field 'dialog\[0\]\.speaker'.*not a known role"):
        load_preferences(path, format="sharegpt_ranking", columns=cols, on_error="fail")


@pytest.mark.parametrize(
    ("label", "expected"), [(True, True), ("false", False), ("TRUE", True), (0, False), (1, True)]
)
def test_kto_label_forms(tmp_path, label, expected):
    row = {"prompt": "Q", "completion": "A", "label": label}
    (rec,) = load_preferences(write_jsonl(tmp_path / "d.jsonl", [row])).records
    assert isinstance(rec, KtoExample) and rec.label is expected
    assert rec.prompt == [user("Q")] and rec.completion == [bot("A")]


def test_pairs_to_kto_splits_each_pair():
    pair = PreferencePair([user("Q")], [bot("A")], [bot("B")], source="f#1")
    good, bad = pairs_to_kto([pair])
    assert (good.completion, good.label, bad.completion, bad.label) == ([bot("A")], True, [bot("B")], False)
    assert good.prompt == bad.prompt == pair.prompt and good.source == "f#1"


# ---------------------------------------------------------------- rejects and errors


def test_bad_records_become_rejects_with_reasons(tmp_path):
    rows = [
        {"prompt": "Q", "chosen": "A", "rejected": "B"},  # good
        {"prompt": "Q", "chosen": "same", "rejected": "same"},
        {"prompt": "Q", "chosen": "  ", "rejected": "B"},
        {"chosen": [user("Q1"), bot("A")], "rejected": [user("Q2"), bot("B")]},
        {"chosen": [user("Q"), bot("A")], "rejected": [user("Q"), bot("A"), user("more")]},
        {"prompt": "Q", "chosen": 5, "rejected": "B"},
        {"prompt": "Q", "chosen": "A"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    result = load_preferences(path)
    assert len(result.records) == 1 and result.total == len(rows)
    reasons = [r.reason for r in result.rejects]
    assert reasons == [
        "identical_answers", "empty_answer", "no_common_prefix", "nothing_after_prefix", "wrong_type", "missing_field"
    ]  # fmt: skip
    assert [r.record for r in result.rejects] == [2, 3, 4, 5, 6, 7]
    assert result.rejects[4].field == "chosen" and result.rejects[0].raw == rows[1]
    with pytest.raises(DataError, match="record 2") as err:
        load_preferences(path, on_error="fail")
    assert "chosen and rejected are the same" in str(err.value)


def test_bad_kto_label_is_a_reject(tmp_path):
    rows = [{"prompt": "Q", "completion": "A", "label": True}, {"prompt": "Q", "completion": "A", "label": "maybe"},
            {"prompt": "Q", "completion": "A", "label": 2}]  # fmt: skip
    result = load_preferences(write_jsonl(tmp_path / "d.jsonl", rows))
    assert (
        len(result.records) == 1
        and [(r.reason, r.field) for r in result.rejects] == [("bad_label", "label")] * 2
    )


def test_sft_conversations_give_one_clear_error(shared_data):
    path = shared_data / "llamafactory" / "alpaca_en_demo.json"
    with pytest.raises(DataError, match="task: sft"):
        load_preferences(path)


def test_kto_and_pairs_in_one_file_is_an_error(tmp_path):
    rows = [
        {"prompt": "Q", "chosen": "A", "rejected": "B"},
        {"messages": [user("Q"), bot("A")], "label": True},
    ]
    with pytest.raises(DataError, match="mixes KTO records"):
        load_preferences(write_jsonl(tmp_path / "d.jsonl", rows))


def test_unknown_columns_and_formats_are_errors(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"}])
    with pytest.raises(DataError, match="not a field of the preference format"):
        load_preferences(path, columns={"answer": "chosen"})
    with pytest.raises(DataError, match="not a preference format"):
        load_preferences(path, format="alpaca")


def test_kto_conversation_under_another_name_and_bad_endings(tmp_path):
    # argilla/kto-mix style (LLaMA-Factory maps messages: completion): the whole chat is "completion"
    rows = [{"completion": [user("Q"), bot("A")], "label": False},
            {"completion": [user("Q"), bot("A"), user("and?")], "label": True},
            {"completion": [user("Q")], "label": True}]  # fmt: skip
    result = load_preferences(
        write_jsonl(tmp_path / "d.jsonl", rows), format="kto", columns={"messages": "completion"}
    )
    (rec,) = result.records
    assert (rec.prompt, rec.completion, rec.label) == ([user("Q")], [bot("A")], False)
    assert [(r.reason, r.record) for r in result.rejects] == [("no_answer", 2), ("no_answer", 3)]


@pytest.mark.parametrize(
    ("row", "task"), [({"text": "t", "label": "pos"}, "classification"), ({"text": "t"}, "pretrain")]
)
def test_other_tasks_data_names_its_task(tmp_path, row, task):
    with pytest.raises(DataError, match=f"task: {task}"):
        load_preferences(write_jsonl(tmp_path / "d.jsonl", [row]))
