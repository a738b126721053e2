"""load_eval_data: check files, chat/instruction files and labelled files, turned into prompts with references."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lmtune.errors import DataError
from lmtune.eval.items import load_eval_data

SST2_DEV = Path(__file__).resolve().parents[2].parent / "shared/data/cls_sst2/dev.tsv"


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# ------------------------------------------------------------------------------------------ check files


@pytest.fixture
def checks_file(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "checks.jsonl",
        [
            {"prompt": "Who are you?", "reference": "I am Ada.", "contains": ["Ada"]},
            {"prompt": "What is 2+2?", "reference": "4"},
            {"prompt": "Say your name.", "contains": ["Ada"]},  # no reference: nothing for loss to score
        ],
    )


def test_check_file_is_chat_with_one_user_turn(checks_file: Path):
    data = load_eval_data(checks_file)
    assert (data.kind, data.format, data.total, data.labels, data.rejects) == ("chat", "checks", 3, None, [])
    first, second, third = data.items
    assert first.source == "checks.jsonl#1"
    assert first.prompt == [user("Who are you?")]
    assert first.reference == "I am Ada."
    assert first.messages == [user("Who are you?"), assistant("I am Ada.")]
    assert first.contains == ["Ada"]
    assert (second.reference, second.contains) == ("4", [])
    assert second.messages == [user("What is 2+2?"), assistant("4")]
    assert (third.prompt, third.reference, third.messages, third.contains) == (
        [user("Say your name.")],
        None,
        None,
        ["Ada"],
    )


def test_check_file_with_system_puts_the_system_turn_first(checks_file: Path):
    item = load_eval_data(checks_file, system="S").items[0]
    system = {"role": "system", "content": "S"}
    assert item.prompt == [system, user("Who are you?")]
    assert item.messages == [system, user("Who are you?"), assistant("I am Ada.")]


def test_check_file_limit(checks_file: Path):
    data = load_eval_data(checks_file, limit=2)
    assert [i.source for i in data.items] == ["checks.jsonl#1", "checks.jsonl#2"]
    assert data.total == 2


# ------------------------------------------------------------------------------------------ chat files

TOOL_CALL = [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]


@pytest.fixture
def chat_file(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {"messages": [user("Hi"), assistant("Hello!"), user("And 2+2?"), assistant("4")]},
            {"messages": [user("Tell me a joke")]},  # ends with a user turn: a prompt without reference
            {"messages": [user("Weather?"), {"role": "assistant", "content": "", "tool_calls": TOOL_CALL}]},
            {"messages": [user("Bye"), assistant("Goodbye.")]},
        ],
    )


def test_openai_messages_reference_is_the_last_assistant_message(chat_file: Path):
    data = load_eval_data(chat_file)
    assert (data.kind, data.format, data.total) == ("chat", "openai", 4)
    convo = [user("Hi"), assistant("Hello!"), user("And 2+2?"), assistant("4")]
    first = data.items[0]
    assert first.source == "chat.jsonl#1"
    assert first.prompt == convo[:3]
    assert first.reference == "4"
    assert first.messages == convo


def test_record_ending_with_a_user_turn_has_no_reference(chat_file: Path):
    item = load_eval_data(chat_file).items[1]
    assert item.source == "chat.jsonl#2"
    assert item.prompt == [user("Tell me a joke")]
    assert (item.reference, item.messages) == (None, None)


def test_tool_call_as_reference_is_rejected_and_counted(chat_file: Path):
    data = load_eval_data(chat_file)
    assert [i.source for i in data.items] == ["chat.jsonl#1", "chat.jsonl#2", "chat.jsonl#4"]
    assert [(r.record, r.reason, r.field) for r in data.rejects] == [
        (3, "reference_is_tool_call", "messages")
    ]
    assert data.rejects[0].raw["messages"][1]["tool_calls"] == TOOL_CALL  # the record is kept in the reject
    assert len(data.items) + len(data.rejects) == data.total == 4


def test_chat_file_with_system_and_limit(chat_file: Path):
    data = load_eval_data(chat_file, system="S", limit=2)
    assert data.total == 2
    assert [i.source for i in data.items] == ["chat.jsonl#1", "chat.jsonl#2"]
    assert data.items[0].prompt[0] == {"role": "system", "content": "S"}
    assert data.items[0].messages[0] == {"role": "system", "content": "S"}
    assert data.items[1].prompt == [{"role": "system", "content": "S"}, user("Tell me a joke")]


def test_alpaca_json_is_chat(tmp_path: Path):
    path = tmp_path / "alpaca.json"
    rows = [
        {"instruction": "Translate to English.", "input": "chat", "output": "cat"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")
    data = load_eval_data(path)
    assert (data.kind, data.format, data.total, data.rejects) == ("chat", "alpaca", 2, [])
    first, second = data.items
    # alpaca: instruction, a blank line, then the input (no input: the instruction alone)
    assert first.prompt == [user("Translate to English.\n\nchat")]
    assert first.reference == "cat"
    assert first.messages == [user("Translate to English.\n\nchat"), assistant("cat")]
    assert (second.prompt, second.reference) == ([user("Name a colour.")], "Blue.")


# ------------------------------------------------------------------------------------------ labelled files


@pytest.fixture
def labelled_tsv(tmp_path: Path) -> Path:
    path = tmp_path / "reviews.tsv"
    rows = [("great film", "2"), ("awful", "10"), ("fine", "1"), ("superb", "2")]
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows), encoding="utf-8")
    return path


def test_labelled_tsv_is_classification_with_numeric_label_order(labelled_tsv: Path):
    data = load_eval_data(labelled_tsv, prompt_template="Review: {text}\nSentiment:")
    assert (data.kind, data.format, data.total, data.rejects) == ("classification", "classification", 4, [])
    assert data.labels == ["1", "2", "10"]  # numeric order; as strings it would be 1, 10, 2
    first = data.items[0]
    assert first.prompt == [user("Review: great film\nSentiment:")]
    assert (first.reference, first.label, first.text, first.messages) == ("2", "2", "great film", None)
    assert [i.label for i in data.items] == ["2", "10", "1", "2"]


def test_labelled_jsonl_with_system_and_limit(tmp_path: Path):
    path = write_jsonl(
        tmp_path / "labelled.jsonl",
        [{"text": "yes", "label": "pos"}, {"text": "no", "label": "neg"}, {"text": "meh", "label": "mid"}],
    )
    data = load_eval_data(path, system="S", limit=2)
    assert (data.kind, data.total, data.labels) == ("classification", 2, ["neg", "pos"])
    assert data.items[0].prompt == [{"role": "system", "content": "S"}, user("yes")]


def test_bad_prompt_template_is_a_data_error_naming_it(labelled_tsv: Path):
    with pytest.raises(DataError, match=r"prompt template '\{nope\}'"):
        load_eval_data(labelled_tsv, prompt_template="{nope}")


def test_given_labels_must_cover_the_data(labelled_tsv: Path):
    with pytest.raises(DataError, match=r"\['10'\]"):
        load_eval_data(labelled_tsv, labels=["1", "2"])
    # a superset is kept as given, in the given order
    assert load_eval_data(labelled_tsv, labels=["10", "2", "1", "3"]).labels == ["10", "2", "1", "3"]


def test_missing_file_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match="file not found"):
        load_eval_data(tmp_path / "nowhere.jsonl")


def test_sst2_dev_file():
    data = load_eval_data(SST2_DEV, limit=None)
    assert (data.kind, data.total, len(data.items), data.rejects) == ("classification", 872, 872, [])
    assert data.labels == ["0", "1"]
    assert Counter(i.label for i in data.items) == {"1": 444, "0": 428}
    # the first data row of the file (after the "label<TAB>content" header)
    with SST2_DEV.open(encoding="utf-8") as fh:
        fh.readline()
        label, text = fh.readline().rstrip("\n").split("\t")
    assert (data.items[0].label, data.items[0].text, data.items[0].prompt) == (label, text, [user(text)])
