"""load_conversations end to end: real third-party files, and every kind of bad record."""

from __future__ import annotations

import json
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmtune.data.load import load_conversations, summarize_rejects, write_jsonl, write_rejects
from lmtune.errors import DataError


def texts(conv) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in conv.messages]


def write_lines(path, rows) -> None:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


# ---------------------------------------------------------------- real files


def test_alpaca_small(shared_data):
    start = time.perf_counter()
    res = load_conversations(shared_data / "alpaca_en_stanford" / "alpaca_small.json")
    assert time.perf_counter() - start < 1.0
    assert (res.format, len(res.records), res.total, res.rejects) == ("alpaca", 2000, 2000, [])
    rec = res.records[403]
    assert rec.source == "alpaca_small.json#404"
    assert texts(rec) == [  # "\n\n" + input join, and \u2212 / \u00b2 escapes decoded
        ("user", "Simplify the given arithmetic expression.\n\n(5x+3)(2x\u22125)"),
        ("assistant", "10x\u00b2 - 15x + 15"),
    ]
    assert texts(res.records[1])[0] == ("user", "Construct a riddle about the outdoors.")  # empty input


def test_alpaca_tiny_ignores_the_text_column(shared_data):
    res = load_conversations(shared_data / "alpaca_en_stanford" / "alpaca_tiny.json")
    assert len(res.records) == 100
    assert texts(res.records[5]) == [
        ("user", "Identify the odd one out.\n\nTwitter, Instagram, Telegram"),
        ("assistant", "Telegram"),
    ]
    assert not any("Below is an instruction" in m.content for c in res.records for m in c.messages)


def test_seed_tasks_with_dotted_columns(shared_data):
    cols = {"input": "instances.0.input", "output": "instances.0.output"}
    res = load_conversations(shared_data / "alpaca_en_stanford" / "seed_tasks.jsonl", columns=cols)
    assert (res.format, len(res.records)) == ("alpaca", 175)
    assert res.records[0].messages[0].content.startswith("Is there anything I can eat for a breakfast")
    assert res.records[0].messages[1].content.startswith("Yes, you can have 1 oatmeal banana protein shake")


def test_fastchat_sharegpt(shared_data):
    res = load_conversations(shared_data / "sharegpt_fastchat" / "dummy_conversation.json")
    assert (res.format, len(res.records)) == ("sharegpt", 500)
    assert Counter(len(c.messages) for c in res.records) == {2: 167, 4: 166, 6: 167}
    assert all(
        [m.role for m in c.messages] == ["user", "assistant"] * (len(c.messages) // 2) for c in res.records
    )
    assert texts(res.records[0])[0] == ("user", "Who are you?")
    assert res.records[0].messages[1].content.startswith("I am Vicuna")


def test_torchtune_chat_keeps_system(shared_data):
    (conv,) = load_conversations(shared_data / "torchtune_tiny_assets" / "chat_tiny.json").records
    assert texts(conv) == [
        ("system", "You are an AI assistant."),
        ("user", "What is the meaning of life?"),
        ("assistant", "The meaning of life is 42."),
        ("user", "That's ridiculous."),
        ("assistant", "I agree."),
    ]


def test_openai_chat_keeps_text_exactly(shared_data):
    res = load_conversations(shared_data / "openai_messages_msfoundry" / "chat_train.jsonl")
    assert (res.format, len(res.records)) == ("openai", 449)
    answers = [c.messages[-1].content for c in res.records]
    assert all(a.startswith(" ") and a.endswith("!!!") for a in answers)  # nothing stripped
    assert res.records[0].messages[-1].content.endswith("#### 72!!!")


def test_openai_tool_calls(shared_data):
    path = shared_data / "openai_messages_msfoundry" / "stock_toolcall_training.jsonl"
    raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    res = load_conversations(path)
    assert len(res.records) == 86
    calls = [c.messages[-1] for c in res.records if c.messages[-1].tool_calls]
    assert len(calls) == 36 and all(m.content == "" and m.role == "assistant" for m in calls)
    assert [c.tools for c in res.records] == [r["tools"] for r in raw]
    assert calls[0].tool_calls[0]["function"]["name"] == "get_last_nday_stock_price"


def test_dolly_context_join(shared_data):
    res = load_conversations(shared_data / "dolly_15k" / "databricks-dolly-15k.head34.jsonl")
    assert (res.format, len(res.records)) == ("dolly", 34)
    user = res.records[0].messages[0].content
    assert user.startswith("When did Virgin Australia start operating?\n\nVirgin Australia, the trading name")
    assert texts(res.records[1]) == [
        ("user", "Which is a species of fish? Tope or Rope"),
        ("assistant", "Tope"),
    ]


def test_llamafactory_alpaca_and_glaive(shared_data):
    assert len(load_conversations(shared_data / "llamafactory" / "alpaca_en_demo.json").records) == 999
    res = load_conversations(shared_data / "llamafactory" / "glaive_toolcall_en_demo.json")
    assert (res.format, len(res.records)) == ("sharegpt", 300)
    msgs = [m for c in res.records for m in c.messages]
    assert sum(1 for m in msgs if m.tool_calls) == 211 and sum(1 for m in msgs if m.role == "tool") == 211
    first = res.records[0]
    assert [m.role for m in first.messages][:6] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert first.messages[3].tool_calls[0]["function"]["name"] == "search_recipes"
    args = json.loads(first.messages[3].tool_calls[0]["function"]["arguments"])
    assert args == {"ingredients": ["chicken", "bell peppers", "rice"]}
    assert first.tools[0]["function"]["name"] == "search_recipes"
    assert sum(1 for c in res.records if c.tools) == 191  # the others have "[]" or ""


@pytest.mark.parametrize(
    ("rel", "task"),
    [
        ("torchtune_tiny_assets/hh_rlhf_tiny.json", "task: preference"),
        ("torchtune_tiny_assets/stack_exchange_paired_tiny.json", "task: preference"),
        ("dpo_openai_orca_msfoundry/validation.jsonl", "task: preference"),
        ("llamafactory/c4_demo.jsonl", "task: pretrain"),
    ],
)
def test_wrong_task_files_fail_once(shared_data, rel, task):
    with pytest.raises(DataError) as err:
        load_conversations(shared_data / rel)
    assert task in str(err.value) and rel.split("/")[-1] in str(err.value) and "not SFT" in str(err.value)


def test_forced_preference_format_fails_once(tmp_path):
    p = tmp_path / "p.jsonl"
    write_lines(p, [{"instruction": "i", "output": "o"}] * 3)
    with pytest.raises(DataError, match="task: preference"):
        load_conversations(p, format="preference")


# ---------------------------------------------------------------- bad records


def mixed_file(tmp_path):
    p = tmp_path / "mixed.jsonl"
    ok = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    write_lines(
        p,
        [
            ok,  # 1
            '{"messages": [',  # 2 invalid json
            {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]},  # 3
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"},
                ]
            },  # 4
            {"messages": [{"role": "user", "content": "q"}]},  # 5
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},  # 6
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": 2},
                ]
            },  # 7
            {"messages": "nope"},  # 8
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]},  # 9
            ok,  # 10
        ],
    )
    return p


def test_skip_collects_rejects_with_line_field_and_raw(tmp_path):
    p = mixed_file(tmp_path)
    res = load_conversations(p)
    assert res.total == 10 and [c.source for c in res.records] == ["mixed.jsonl#1", "mixed.jsonl#10"]
    got = [(r.record, r.line, r.reason, r.field) for r in res.rejects]
    assert got == [
        (2, 2, "invalid_json", None),
        (3, 3, "unknown_role", "messages[1].role"),
        (4, 4, "not_alternating", "messages[1].role"),
        (5, 5, "no_assistant_last", "messages[0].role"),
        (6, 6, "empty_answer", "messages[1].content"),
        (7, 7, "bad_weight", "messages[1].weight"),
        (8, 8, "wrong_type", "messages"),
        (9, 9, "missing_field", "messages[1].content"),
    ]
    assert all(r.file == str(p) and "Fix:" in r.message for r in res.rejects)
    assert res.rejects[0].raw == '{"messages": ['
    assert res.rejects[1].raw["messages"][1]["role"] == "robot"
    summary = summarize_rejects(res)
    assert summary.startswith("8 of 10 records skipped: ") and "1 invalid_json" in summary
    assert summary.endswith("(see rejects.jsonl)")


def test_fail_stops_at_first_bad_record(tmp_path):
    p = mixed_file(tmp_path)
    with pytest.raises(DataError) as err:
        load_conversations(p, on_error="fail")
    msg = str(err.value)
    assert "mixed.jsonl" in msg and "line 2" in msg and "Fix:" in msg
    assert (err.value.line, err.value.record) == (2, 2)
    p.write_text('{"instruction": "i", "output": "o"}\n{"instruction": "i", "output": 3}\n')
    with pytest.raises(DataError) as err:
        load_conversations(p, on_error="fail")
    assert (err.value.line, err.value.field) == (2, "output") and "line 2" in str(err.value)


def test_rejects_round_trip(tmp_path):
    p = mixed_file(tmp_path)
    res = load_conversations(p)
    out = tmp_path / "run" / "rejects.jsonl"
    write_rejects(res.rejects, out)
    back = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert back == [r.to_dict() for r in res.rejects]
    source_lines = p.read_text().splitlines()
    for r in back:  # every skipped record is recoverable from its raw data
        raw = r["raw"] if isinstance(r["raw"], str) else json.dumps(r["raw"])
        assert raw == source_lines[r["line"] - 1]


def test_write_jsonl_keeps_unicode(tmp_path):
    out = tmp_path / "o.jsonl"
    write_jsonl([{"t": "caf\u00e9"}, {"t": "\u2212"}], out)
    assert out.read_text(encoding="utf-8") == '{"t": "café"}\n{"t": "\u2212"}\n'


def test_weights_honoured(tmp_path):
    p = tmp_path / "w.jsonl"
    write_lines(
        p,
        [
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": 0},
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "b", "weight": 1},
                ]
            }
        ],
    )
    (conv,) = load_conversations(p).records
    assert [m.weight for m in conv.messages] == [None, 0, None, 1]


def test_nothing_valid_is_one_error_with_top_reasons(tmp_path):
    p = tmp_path / "bad.jsonl"
    write_lines(p, [{"instruction": "i", "output": ""}] * 3 + [{"instruction": "i", "output": 1}])
    with pytest.raises(DataError) as err:
        load_conversations(p)
    assert "all 4 were rejected" in str(err.value) and "3 empty_answer" in str(err.value)
    p.write_text("not json\nnor this\n")
    with pytest.raises(DataError, match="2 invalid_json"):
        load_conversations(p)
    p.write_text("\n\n")
    with pytest.raises(DataError, match="no records"):
        load_conversations(p)


# ---------------------------------------------------------------- other file types and options


def test_csv_with_bad_row(tmp_path):
    p = tmp_path / "pc.csv"
    p.write_text('prompt,completion\n"Hi, there",Hello\nbad,row,extra\n2+2,4\n')
    res = load_conversations(p)
    assert res.format == "prompt_completion"
    assert [texts(c) for c in res.records] == [
        [("user", "Hi, there"), ("assistant", "Hello")],
        [("user", "2+2"), ("assistant", "4")],
    ]
    assert [(r.reason, r.line, r.raw) for r in res.rejects] == [("bad_row", 3, "bad,row,extra")]


def test_tsv_parquet_bom_and_wrapped_json(tmp_path):
    tsv = tmp_path / "a.tsv"
    tsv.write_bytes(b"\xef\xbb\xbfinstruction\tinput\toutput\r\nSay hi\t\thi\r\n")
    assert texts(load_conversations(tsv).records[0]) == [("user", "Say hi"), ("assistant", "hi")]
    pqf = tmp_path / "d.parquet"
    pq.write_table(
        pa.table({"instruction": ["i1", "i2"], "context": ["", "c"], "response": ["r1", "r2"]}), pqf
    )
    res = load_conversations(pqf)
    assert res.format == "dolly" and texts(res.records[1])[0] == ("user", "i2\n\nc")
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"data": [{"prompt": "p", "completion": "c"}]}))
    assert len(load_conversations(wrapped).records) == 1
    as_json = tmp_path / "lines.json"
    write_lines(as_json, [{"prompt": "p", "completion": "c"}, "{bad", {"prompt": "p2", "completion": "c2"}])
    res = load_conversations(as_json)
    assert len(res.records) == 2 and [(r.reason, r.line) for r in res.rejects] == [("invalid_json", 2)]


def test_options(tmp_path):
    p = tmp_path / "a.jsonl"
    write_lines(p, [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)])
    res = load_conversations(
        p, columns={"instruction": "question", "output": "answer"}, system="Be nice.", limit=3
    )
    assert res.total == 3 and len(res.records) == 3
    assert texts(res.records[2]) == [("system", "Be nice."), ("user", "q2"), ("assistant", "a2")]
    res = load_conversations(p, format="alpaca", columns={"instruction": "question", "output": "answer"})
    assert len(res.records) == 5
    with pytest.raises(DataError, match="Did you mean 'instruction'"):
        load_conversations(p, format="alpaca", columns={"instrucion": "question", "output": "answer"})
    with pytest.raises(DataError, match="Did you mean 'sharegpt'"):
        load_conversations(p, format="sharegtp")
    with pytest.raises(DataError, match="on_error"):
        load_conversations(p, on_error="ignore")
    with pytest.raises(DataError, match="limit"):
        load_conversations(p, limit=0)
    assert summarize_rejects(res) == "all 5 records loaded"


# ---------------------------------------------------------------- ShareGPT speaker names (roles)


def test_roles_name_the_files_own_speakers(tmp_path):
    path = tmp_path / "chat.jsonl"
    turns = [("SYS", "Be brief."), ("Q", "Hi"), ("tool_use", '{"name": "f", "arguments": {}}'),
             ("result", "42"), ("A", "It is 42.")]  # fmt: skip
    write_lines(path, [
        {"conversations": [{"from": w, "value": v} for w, v in turns]},
        {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]},  # usual names still work
        {"conversations": [{"from": "Q", "value": "x"}, {"from": "Robot", "value": "y"}]},
    ])  # fmt: skip
    roles = {"user": "Q", "assistant": "A", "system": "SYS", "tool": "result", "function_call": "tool_use"}
    res = load_conversations(path, format="sharegpt", roles=roles)
    msgs = res.records[0].messages
    assert [(m.role, m.content) for m in msgs] == [
        ("system", "Be brief."), ("user", "Hi"), ("assistant", ""), ("tool", "42"), ("assistant", "It is 42.")]  # fmt: skip
    assert msgs[2].tool_calls == [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert texts(res.records[1]) == [("user", "x"), ("assistant", "y")]
    (reject,) = res.rejects
    assert (reject.reason, reject.record, reject.field) == ("unknown_role", 3, "conversations[1].from")
    assert "'Robot'" in reject.message and "roles:" in reject.message


def test_roles_mistakes_are_data_errors(tmp_path):
    path = tmp_path / "chat.jsonl"
    write_lines(path, [{"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}])
    with pytest.raises(DataError, match="'usr', which is not a role. Did you mean 'user'"):
        load_conversations(path, roles={"usr": "Q"})
    oa = tmp_path / "oa.jsonl"
    write_lines(oa, [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}])
    with pytest.raises(DataError, match="read as openai") as err:
        load_conversations(oa, roles={"user": "Q"})
    assert "format: sharegpt" in str(err.value)
