"""Tool-calling conversations (LLaMA-Factory's glaive_toolcall_en_demo, read through its registry).

Two templates: SmolLM2's own, which knows nothing of tools (so lmtune's documented fallback is
used), and a Qwen2.5-style template that renders `tools` and `tool_calls` itself. For both, the
trained text is compared with what an independent reading of the raw JSON says the assistant
must produce: every `gpt` answer and every `function_call`, each with its end-of-turn token, and
nothing else (no user turn, no `observation` tool result, no tool listing).
"""

from __future__ import annotations

import copy
import json

import pytest

from lmtune.data.registry import registry_spec
from lmtune.data.sources import load_file
from lmtune.tokenize.masking import IGNORE, tokenize_conversation

# Qwen2.5-Instruct's public chat template (tools in the system turn, <tool_call> JSON per call,
# tool results as <tool_response> inside a user turn).
QWEN25 = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}{%- endif %}"
    '{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}'
    '{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}'
    '{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}'
    "{%- else %}{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- for message in messages %}"
    '{%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}'
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == \"assistant\" %}{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' }}{{- tool_call.name }}{{- \'", "arguments": \' }}'
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    '{%- elif message.role == "tool" %}'
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
END = "<|im_end|>\n"
N = 60  # records checked per template (of 300), enough to cover single, repeated and no tool calls


@pytest.fixture(scope="module")
def glaive(shared_data):
    """(raw JSON records, records as lmtune read them through the registry)."""
    folder = shared_data / "llamafactory"
    spec = registry_spec(folder / "dataset_info.json", "glaive_toolcall_en_demo")
    result = load_file(spec, "sft", on_error="fail")
    raw = json.loads((folder / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    assert len(result.records) == len(raw)
    return raw, result.records


@pytest.fixture()
def smol(smollm2_tokenizer):
    return copy.deepcopy(smollm2_tokenizer)


@pytest.fixture()
def qwen(smollm2_tokenizer):
    tok = copy.deepcopy(smollm2_tokenizer)  # has <|im_start|>/<|im_end|>; only the template changes
    tok.chat_template = QWEN25
    return tok


def trained_runs(tok, out) -> list[str]:
    runs, cur = [], []
    for t, lab in zip(out.input_ids, out.labels):
        if lab != IGNORE:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def expected_runs(raw: dict, native: bool) -> list[str]:
    """What the model must learn to write, from the raw ShareGPT turns alone."""
    out = []
    for turn in raw["conversations"]:
        if turn["from"] == "gpt":
            out.append(turn["value"] + END)
        elif turn["from"] == "function_call":
            call = json.loads(turn["value"])
            if native:  # the Qwen template's own rendering of a tool call
                body = f'{{"name": "{call["name"]}", "arguments": {json.dumps(call["arguments"], ensure_ascii=False)}}}'
                out.append(f"<tool_call>\n{body}\n</tool_call>" + END)
            else:  # lmtune's fallback
                body = json.dumps({"name": call["name"], "arguments": call["arguments"]}, ensure_ascii=False)
                out.append(f"<tool_call>{body}</tool_call>" + END)
    return out


def tool_listing(raw: dict) -> list[str]:
    return [
        json.dumps({"type": "function", "function": t}, ensure_ascii=False) for t in json.loads(raw["tools"])
    ]


def render(tok, conv):
    return tokenize_conversation(tok, [m.to_dict() for m in conv.messages], tools=conv.tools, max_length=8192)


def test_glaive_has_tool_calls_and_results(glaive):
    raw, records = glaive
    calls = sum(t["from"] == "function_call" for r in raw[:N] for t in r["conversations"])
    results = [m for c in records[:N] for m in c.messages if m.role == "tool"]
    assert calls > 20 and len(results) == calls  # the checks below cover real tool turns
    assert [bool(c.tools) for c in records] == [bool(json.loads(r["tools"])) for r in raw]


@pytest.mark.parametrize("which", ["smol", "qwen"])
def test_only_assistant_turns_and_tool_calls_are_trained(glaive, which, request):
    tok = request.getfixturevalue(which)
    raw, records = glaive
    for r, conv in zip(raw[:N], records[:N]):
        out = render(tok, conv)
        assert trained_runs(tok, out) == expected_runs(r, native=which == "qwen"), conv.source
        trained = tok.decode([t for t, lab in zip(out.input_ids, out.labels) if lab != IGNORE])
        for turn in r["conversations"]:
            if turn["from"] in ("human", "observation"):
                assert turn["value"] not in trained, conv.source


def test_template_with_tools_renders_them_itself(glaive, qwen):
    raw, records = glaive
    out = render(qwen, records[0])
    text = qwen.decode(out.input_ids)
    system = text[: text.index(END)]
    assert system.startswith("<|im_start|>system\nYou are Qwen")
    for line in tool_listing(raw[0]):
        assert f"<tools>\n{line}\n</tools>" in system  # the template's own tool block
    assert "You can call these tools" not in text  # no fallback
    assert "<tool_response>\n" + raw[0]["conversations"][4]["value"] + "\n</tool_response>" in text


def test_template_without_tools_uses_the_documented_fallback(glaive, smol):
    raw, records = glaive
    out = render(smol, records[0])
    text = smol.decode(out.input_ids)
    listing = "\n".join(tool_listing(raw[0]))
    assert text.startswith(f"<|im_start|>system\nYou can call these tools:\n{listing}{END}")
    assert "You are a helpful AI assistant named SmolLM" not in text  # the inserted system turn replaces it
    assert f"<|im_start|>tool\n{raw[0]['conversations'][4]['value']}{END}" in text
    labels_of_system = out.labels[: len(smol(text[: text.index(END)], add_special_tokens=False)["input_ids"])]
    assert set(labels_of_system) == {IGNORE}


def test_fallback_appends_tools_to_an_existing_system_message(glaive, smol):
    raw, records = glaive
    conv = copy.deepcopy(records[0])
    msgs = [{"role": "system", "content": "Be brief."}] + [m.to_dict() for m in conv.messages]
    out = tokenize_conversation(smol, msgs, tools=conv.tools, max_length=8192)
    listing = "\n".join(tool_listing(raw[0]))
    assert smol.decode(out.input_ids).startswith(
        f"<|im_start|>system\nBe brief.\n\nYou can call these tools:\n{listing}{END}"
    )
    assert trained_runs(smol, out) == expected_runs(raw[0], native=False)
