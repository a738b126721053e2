"""Format detection and conversion to canonical conversations."""

from __future__ import annotations

import json

import pytest

from lmtune.data.formats import detect_format, to_conversation
from lmtune.data.validate import RecordError
from lmtune.errors import DataError


def records(path) -> list[dict]:
    """Parse a real file independently of lmtune's readers."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.split("\n") if line.strip()]
    return json.loads(text)


def roles(conv) -> list[str]:
    return [m.role for m in conv.messages]


# ---------------------------------------------------------------- detection on real files


@pytest.mark.parametrize(
    ("rel", "fmt"),
    [
        ("alpaca_en_stanford/alpaca_small.json", "alpaca"),
        ("alpaca_en_stanford/alpaca_tiny.json", "alpaca"),  # extra "text" column must not win
        ("llamafactory/alpaca_en_demo.json", "alpaca"),
        ("dolly_15k/databricks-dolly-15k.head34.jsonl", "dolly"),
        ("sharegpt_fastchat/dummy_conversation.json", "sharegpt"),
        ("torchtune_tiny_assets/chat_tiny.json", "sharegpt"),
        ("llamafactory/glaive_toolcall_en_demo.json", "sharegpt"),
        ("openai_messages_msfoundry/chat_train.jsonl", "openai"),
        ("openai_messages_msfoundry/stock_toolcall_training.jsonl", "openai"),
        ("torchtune_tiny_assets/hh_rlhf_tiny.json", "preference"),
        ("torchtune_tiny_assets/stack_exchange_paired_tiny.json", "preference"),
        ("dpo_openai_orca_msfoundry/validation.jsonl", "preference"),
        ("llamafactory/dpo_en_demo.json", "preference"),  # conversations + chosen/rejected
        ("llamafactory/c4_demo.jsonl", "text"),
    ],
)
def test_detect_real_files(shared_data, rel, fmt):
    assert detect_format(records(shared_data / rel)[:20], file=rel) == fmt


def test_detect_kto_file_is_refused(shared_data):
    with pytest.raises(DataError, match="KTO") as err:
        detect_format(records(shared_data / "llamafactory/kto_en_demo.json"), file="kto_en_demo.json")
    assert "format: openai" in str(err.value)


def test_detect_seed_tasks_needs_columns(shared_data):
    recs = records(shared_data / "alpaca_en_stanford/seed_tasks.jsonl")
    with pytest.raises(DataError, match="instances.0.output"):
        detect_format(recs, file="seed_tasks.jsonl")
    cols = {"input": "instances.0.input", "output": "instances.0.output"}
    assert detect_format(recs, file="seed_tasks.jsonl", columns=cols) == "alpaca"


def test_detect_no_match_explains_keys_formats_and_fix():
    with pytest.raises(DataError) as err:
        detect_format([{"question": "q", "answer": "a"}], file="qa.jsonl")
    msg = str(err.value)
    assert "qa.jsonl" in msg and "'question'" in msg and "'answer'" in msg
    assert "alpaca" in msg and "sharegpt" in msg and "format:" in msg and "columns:" in msg
    assert (
        detect_format(
            [{"question": "q", "answer": "a"}],
            file="x",
            columns={"instruction": "question", "output": "answer"},
        )
        == "alpaca"
    )


def test_detect_ambiguous_and_mixed():
    with pytest.raises(DataError, match="alpaca and dolly"):
        detect_format([{"instruction": "i", "output": "o", "response": "r"}], file="x.json")
    mixed = [{"instruction": "i", "output": "o"}, {"messages": []}]
    with pytest.raises(DataError, match="different formats"):
        detect_format(mixed, file="x.json")


def test_detect_ignores_unrecognisable_records():
    samples = [{"prompt": "p", "completion": "c"}, {"prompt": "p"}, {"prompt": "p", "completion": "c"}]
    assert detect_format(samples, file="x.jsonl") == "prompt_completion"


def test_detect_preference_variants():
    assert detect_format([{"prompt": "p", "chosen": "a", "rejected": "b"}], file="x") == "preference"
    assert detect_format([{"question": "q", "response_j": "a", "response_k": "b"}], file="x") == "preference"


# ---------------------------------------------------------------- alpaca / dolly / prompt_completion


def test_alpaca_joins_input_with_blank_line():
    conv = to_conversation({"instruction": "Translate.", "input": "Bonjour", "output": "Hello"}, "alpaca")
    assert [m.to_dict() for m in conv.messages] == [
        {"role": "user", "content": "Translate.\n\nBonjour"},
        {"role": "assistant", "content": "Hello"},
    ]
    conv = to_conversation({"instruction": "Say hi.", "input": "", "output": "hi", "text": "junk"}, "alpaca")
    assert conv.messages[0].content == "Say hi."


def test_alpaca_system_and_history():
    rec = {
        "instruction": "And 3+3?",
        "output": "6",
        "system": "Be brief.",
        "history": [["1+1?", "2"], ["2+2?", "4"]],
    }
    conv = to_conversation(rec, "alpaca")
    assert roles(conv) == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert [m.content for m in conv.messages] == ["Be brief.", "1+1?", "2", "2+2?", "4", "And 3+3?", "6"]


def test_alpaca_errors_name_the_field():
    with pytest.raises(RecordError) as err:
        to_conversation({"instruction": "i", "output": 42}, "alpaca")
    assert err.value.reason == "wrong_type" and err.value.field == "output"
    assert "string" in str(err.value) and "int" in str(err.value) and "Fix:" in str(err.value)
    with pytest.raises(RecordError) as err:
        to_conversation({"instruction": "i", "input": "x"}, "alpaca")
    assert err.value.reason == "missing_field" and err.value.field == "output"
    with pytest.raises(RecordError) as err:
        to_conversation({"instruction": "i", "output": "o", "history": [["only one"]]}, "alpaca")
    assert err.value.field == "history[0]"


def test_alpaca_with_renamed_and_dotted_columns(shared_data):
    seed = records(shared_data / "alpaca_en_stanford/seed_tasks.jsonl")
    cols = {"input": "instances.0.input", "output": "instances.0.output"}
    conv = to_conversation(seed[0], "alpaca", columns=cols)
    assert conv.messages[0].content == seed[0]["instruction"]  # empty input: no blank line
    assert conv.messages[1].content == seed[0]["instances"][0]["output"]
    with_input = next(r for r in seed if r["instances"][0]["input"])
    conv = to_conversation(with_input, "alpaca", columns=cols)
    assert (
        conv.messages[0].content == with_input["instruction"] + "\n\n" + with_input["instances"][0]["input"]
    )
    with pytest.raises(RecordError) as err:
        to_conversation({"instruction": "i", "instances": []}, "alpaca", columns=cols)
    assert err.value.reason == "missing_field" and err.value.field == "instances.0.output"
    conv = to_conversation(
        {"question": "q", "answer": "a"}, "alpaca", columns={"instruction": "question", "output": "answer"}
    )
    assert [m.content for m in conv.messages] == ["q", "a"]


def test_dolly_and_prompt_completion():
    rec = {
        "instruction": "Summarise.",
        "context": "Long text.",
        "response": "Short.",
        "category": "summarization",
    }
    conv = to_conversation(rec, "dolly")
    assert [m.content for m in conv.messages] == ["Summarise.\n\nLong text.", "Short."]
    conv = to_conversation({"prompt": "2+2=", "completion": " 4"}, "prompt_completion")
    assert [(m.role, m.content) for m in conv.messages] == [("user", "2+2="), ("assistant", " 4")]


def test_default_system_only_when_missing():
    conv = to_conversation({"instruction": "i", "output": "o"}, "alpaca", system="Default.")
    assert roles(conv) == ["system", "user", "assistant"] and conv.messages[0].content == "Default."
    conv = to_conversation({"instruction": "i", "output": "o", "system": "Own."}, "alpaca", system="Default.")
    assert [m.content for m in conv.messages if m.role == "system"] == ["Own."]


# ---------------------------------------------------------------- sharegpt


def test_sharegpt_roles_system_and_tools(shared_data):
    rec = {
        "system": "You are helpful.",
        "tools": '[{"name": "add", "description": "Add.", "parameters": {"type": "object"}}]',
        "conversations": [
            {"from": "human", "value": "1+2?"},
            {"from": "function_call", "value": '{"name": "add", "arguments": {"a": 1, "b": 2}}'},
            {"from": "observation", "value": "3"},
            {"from": "gpt", "value": "3."},
        ],
    }
    conv = to_conversation(rec, "sharegpt")
    assert roles(conv) == ["system", "user", "assistant", "tool", "assistant"]
    call = conv.messages[2]
    assert call.content == "" and call.tool_calls == [
        {"type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    ]
    assert json.loads(call.tool_calls[0]["function"]["arguments"]) == {"a": 1, "b": 2}
    assert conv.tools == [
        {
            "type": "function",
            "function": {"name": "add", "description": "Add.", "parameters": {"type": "object"}},
        }
    ]


@pytest.mark.parametrize("who", ["chatgpt", "bard", "bing", "model", "assistant", "GPT"])
def test_sharegpt_assistant_aliases(who):
    conv = to_conversation(
        {"conversations": [{"from": "user", "value": "q"}, {"from": who, "value": "a"}]}, "sharegpt"
    )
    assert roles(conv) == ["user", "assistant"]


def test_sharegpt_role_content_keys_and_columns():
    rec = {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert roles(to_conversation(rec, "sharegpt")) == ["user", "assistant"]
    rec = {"turns": [{"who": "human", "says": "q"}, {"who": "gpt", "says": "a"}]}
    conv = to_conversation(
        rec, "sharegpt", columns={"conversations": "turns", "from": "who", "value": "says"}
    )
    assert [(m.role, m.content) for m in conv.messages] == [("user", "q"), ("assistant", "a")]


def test_sharegpt_errors():
    with pytest.raises(RecordError) as err:
        to_conversation(
            {"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]}, "sharegpt"
        )
    assert err.value.reason == "unknown_role" and err.value.field == "conversations[1].from"
    with pytest.raises(RecordError) as err:
        to_conversation({"conversations": [{"from": "human"}]}, "sharegpt")
    assert err.value.reason == "missing_field" and err.value.field == "conversations[0].value"
    with pytest.raises(RecordError) as err:
        to_conversation({"conversations": [{"from": "function_call", "value": "{not json"}]}, "sharegpt")
    assert err.value.reason == "bad_tool_call"
    with pytest.raises(RecordError) as err:
        to_conversation({"conversations": "hello"}, "sharegpt")
    assert err.value.reason == "wrong_type" and err.value.field == "conversations"


# ---------------------------------------------------------------- openai


def test_openai_weights_tool_calls_and_tools(shared_data):
    rec = records(shared_data / "openai_messages_msfoundry/stock_toolcall_training.jsonl")[0]
    conv = to_conversation(rec, "openai")
    last = conv.messages[-1]
    assert (
        last.role == "assistant"
        and last.content == ""
        and last.tool_calls == rec["messages"][-1]["tool_calls"]
    )
    assert conv.tools == rec["tools"]
    rec = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "weight": 0},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "b", "weight": 1},
        ]
    }
    assert [m.weight for m in to_conversation(rec, "openai").messages] == [None, 0, None, 1]


def test_openai_content_parts_and_dict_arguments():
    rec = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}],
            },
        ]
    }
    conv = to_conversation(rec, "openai")
    assert conv.messages[0].content == "Hello"
    assert conv.messages[1].tool_calls[0]["function"]["arguments"] == '{"x": 1}'


def test_openai_errors():
    with pytest.raises(RecordError) as err:
        to_conversation({"messages": [{"role": "user", "content": "q"}, {"content": "a"}]}, "openai")
    assert err.value.reason == "missing_field" and err.value.field == "messages[1].role"
    with pytest.raises(RecordError) as err:
        to_conversation({"messages": {"role": "user"}}, "openai")
    assert err.value.reason == "wrong_type" and err.value.field == "messages"
    with pytest.raises(RecordError) as err:
        to_conversation({"messages": [{"role": "user"}]}, "openai")
    assert err.value.reason == "missing_field" and err.value.field == "messages[0].content"
    with pytest.raises(RecordError) as err:
        to_conversation({"messages": [{"role": "user", "content": 5}]}, "openai")
    assert err.value.reason == "wrong_type" and err.value.field == "messages[0].content"
    with pytest.raises(RecordError) as err:
        to_conversation({}, "openai")
    assert err.value.reason == "missing_field" and err.value.field == "messages"


def test_openai_columns():
    rec = {"dialog": [{"speaker": "user", "text": "q"}, {"speaker": "assistant", "text": "a"}]}
    conv = to_conversation(
        rec, "openai", columns={"messages": "dialog", "role": "speaker", "content": "text"}
    )
    assert [(m.role, m.content) for m in conv.messages] == [("user", "q"), ("assistant", "a")]


# ---------------------------------------------------------------- wrong task


@pytest.mark.parametrize("fmt", ["preference", "text"])
def test_preference_and_text_are_not_sft(fmt):
    with pytest.raises(RecordError) as err:
        to_conversation({"text": "x", "chosen": "a", "rejected": "b"}, fmt)
    assert err.value.reason == "wrong_task"
    assert ("task: preference" if fmt == "preference" else "task: pretrain") in str(err.value)


def test_alpaca_tools_column_and_sharegpt_roles():
    schema = {"name": "lookup", "parameters": {"type": "object", "properties": {}}}
    rec = {"q": "Find it", "a": "Done", "fns": json.dumps([schema])}
    conv = to_conversation(rec, "alpaca", columns={"instruction": "q", "output": "a", "tools": "fns"})
    assert conv.tools == [{"type": "function", "function": schema}]
    turns = {"conversations": [{"from": "Kid", "value": "hi"}, {"from": "Mom", "value": "hello"}]}
    conv = to_conversation(turns, "sharegpt", roles={"user": "kid", "assistant": "MOM"})  # case-insensitive
    assert [(m.role, m.content) for m in conv.messages] == [("user", "hi"), ("assistant", "hello")]
    with pytest.raises(RecordError, match="'Kid' is not a known ShareGPT role"):
        to_conversation(turns, "sharegpt")


# ---------------------------------------------------------------- reasoning


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning", "thinking"])
def test_openai_reasoning_field_is_kept_under_its_canonical_name(key):
    rec = {
        "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", key: "Add."}]
    }
    conv = to_conversation(rec, "openai")
    assert conv.messages[1].reasoning_content == "Add." and conv.messages[0].reasoning_content is None
    out = conv.to_dict()["messages"][1]
    assert out == {"role": "assistant", "content": "4", "reasoning_content": "Add."}
    assert to_conversation(conv.to_dict(), "openai").to_dict() == conv.to_dict()  # convert is lossless


def test_think_block_in_content_and_tool_call_id_are_kept():
    rec = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "<think>\nhm\n</think>\n\nA"},
            {"role": "tool", "content": "{}", "tool_call_id": "abc123XYZ"},
        ]
    }
    conv = to_conversation(rec, "openai")
    assert conv.messages[1].content == "<think>\nhm\n</think>\n\nA"
    assert conv.to_dict()["messages"][2]["tool_call_id"] == "abc123XYZ"


def test_reasoning_must_be_text_on_an_assistant_message():
    bad = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning": 3}]
    }
    with pytest.raises(RecordError, match="reasoning") as err:
        to_conversation(bad, "openai")
    assert err.value.field == "messages[1].reasoning"
    from lmtune.data.records import Conversation
    from lmtune.data.validate import validate_conversation

    on_user = Conversation.from_dict(
        {"messages": [{"role": "user", "content": "q", "reasoning_content": "r"}]}
    )
    with pytest.raises(RecordError) as err:
        validate_conversation(on_user, open_end=True)
    assert err.value.reason == "bad_reasoning" and err.value.field == "messages[0].reasoning_content"
