"""Masking is checked against an independent computation.

The implementation finds trained spans by *character* offsets in one rendering of the whole
conversation. The reference below works on *tokens* instead: it tokenises each prefix
render(messages[:i], generation prompt) and render(messages[:i+1]) separately with
`apply_chat_template(tokenize=True)` and says the tokens between the two lengths are trained.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from lmtune.errors import ConfigError
from lmtune.tokenize.masking import (
    IGNORE,
    ChatRenderer,
    MaskingError,
    _overlaps,
    render,
    tokenize_conversation,
    tokenize_conversations,
)
from lmtune.tokenize.templates import apply_template_choice

MULTI = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "It is 6."},
]


def _ids(tok, messages, gen):
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


def reference_labels(tok, messages, turns):
    full = _ids(tok, messages, False)
    labels = [IGNORE] * len(full)
    for i in turns:
        start = len(_ids(tok, messages[:i], True))
        end = len(_ids(tok, messages[: i + 1], False))
        assert full[:end] == _ids(tok, messages[: i + 1], False)  # token-level prefix property
        labels[start:end] = full[start:end]
    return full, labels


@pytest.fixture()
def tok(smollm2_tokenizer):
    return copy.deepcopy(smollm2_tokenizer)


def test_multi_turn_matches_token_level_reference(tok):
    out = tokenize_conversation(tok, MULTI)
    full, labels = reference_labels(tok, MULTI, [1, 3, 5])
    assert out.input_ids == full
    assert out.labels == labels


def test_trained_text_is_each_answer_with_its_end_of_turn(tok):
    out = tokenize_conversation(tok, MULTI)
    runs, cur = [], []
    for t, lab in zip(out.input_ids, out.labels):
        if lab != IGNORE:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    assert runs == ["Hello! How can I help?<|im_end|>\n", "4<|im_end|>\n", "It is 6.<|im_end|>\n"]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == eos
    trained_eos = [t for t, lab in zip(out.input_ids, out.labels) if lab == eos]
    assert len(trained_eos) == 3  # the model learns to stop after every answer


def test_injected_default_system_prompt_is_never_trained(tok):
    out = tokenize_conversation(tok, MULTI[:2])
    text = tok.decode(out.input_ids)
    assert "You are a helpful AI assistant named SmolLM" in text  # the template injected it
    trained = tok.decode([t for t, lab in zip(out.input_ids, out.labels) if lab != IGNORE])
    assert "SmolLM" not in trained and "user" not in trained


def test_explicit_system_replaces_default_and_is_masked(tok):
    msgs = [{"role": "system", "content": "Be brief."}, *MULTI[:2]]
    out = tokenize_conversation(tok, msgs)
    text = tok.decode(out.input_ids)
    assert "Be brief." in text and "SmolLM" not in text
    full, labels = reference_labels(tok, msgs, [2])
    assert (out.input_ids, out.labels) == (full, labels)


def test_train_on_last_and_weights(tok):
    out = tokenize_conversation(tok, MULTI, train_on="last")
    assert out.labels == reference_labels(tok, MULTI, [5])[1]
    weighted = copy.deepcopy(MULTI)
    weighted[1]["weight"] = 0  # OpenAI format: do not learn this answer
    out = tokenize_conversation(tok, weighted, train_on="all")
    assert out.labels == reference_labels(tok, MULTI, [3, 5])[1]
    weighted[3]["weight"] = 1  # explicit 1 wins over train_on=last
    out = tokenize_conversation(tok, weighted, train_on="last")
    assert out.labels == reference_labels(tok, MULTI, [3, 5])[1]


def test_all_tokens_trains_everything(tok):
    out = tokenize_conversation(tok, MULTI, train_on="all_tokens")
    assert out.labels == out.input_ids


def test_truncation_keeps_trained_tokens_or_rejects(tok):
    long_user = [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(MaskingError) as err:
        tokenize_conversation(tok, long_user, max_length=64)
    assert err.value.reason == "no_trained_tokens"
    out = tokenize_conversation(tok, MULTI, max_length=50)
    assert out.truncated and len(out.input_ids) == 50 and out.num_trained > 0
    full, labels = reference_labels(tok, MULTI, [1, 3, 5])
    assert out.labels == labels[:50]


def test_no_trained_turn_is_rejected(tok):
    msgs = copy.deepcopy(MULTI[:2])
    msgs[1]["weight"] = 0
    with pytest.raises(MaskingError) as err:
        tokenize_conversation(tok, msgs)
    assert err.value.reason == "no_trained_turn"


def test_template_that_rewrites_history_is_rejected(tok):
    # Drops the content of earlier assistant turns: the answer is nowhere in the full rendering.
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
        "<|im_start|>assistant\n<|im_end|>\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(MaskingError) as err:
        tokenize_conversation(tok, MULTI)
    assert err.value.reason == "span_not_found"
    assert "assistant message 1" in str(err.value)


@pytest.mark.parametrize("name", ["chatml", "alpaca"])
def test_fallback_templates(tok, name):
    assert apply_template_choice(tok, name) == name
    out = tokenize_conversation(tok, MULTI)
    assert out.labels == reference_labels(tok, MULTI, [1, 3, 5])[1]
    trained = [t for t, lab in zip(out.input_ids, out.labels) if lab != IGNORE]
    stop = tok.convert_tokens_to_ids("<|im_end|>") if name == "chatml" else tok.eos_token_id
    assert trained.count(stop) == 3
    if name == "alpaca":
        assert "### Instruction:\nHi there" in tok.decode(out.input_ids)


def test_missing_template_and_unknown_name_are_config_errors(tok):
    tok.chat_template = None
    with pytest.raises(ConfigError, match="data.template"):
        apply_template_choice(tok, None)
    with pytest.raises(ConfigError, match="chatml, alpaca"):
        apply_template_choice(tok, "vicuna")


def test_tool_calls_fallback_is_trained_and_tool_results_are_not(tok):
    call = {"type": "function", "function": {"name": "price", "arguments": json.dumps({"symbol": "BAC"})}}
    msgs = [
        {"role": "user", "content": "BAC price?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "42.0"},
        {"role": "assistant", "content": "It is 42."},
    ]
    tools = [{"type": "function", "function": {"name": "price", "parameters": {}}}]
    out = tokenize_conversation(tok, msgs, tools=tools)
    text = tok.decode(out.input_ids)
    assert '<tool_call>{"name": "price", "arguments": {"symbol": "BAC"}}</tool_call>' in text
    assert "You can call these tools" in text
    trained = tok.decode([t for t, lab in zip(out.input_ids, out.labels) if lab != IGNORE])
    assert "<tool_call>" in trained and "It is 42." in trained
    assert "42.0" not in trained and "BAC price" not in trained


def test_every_fastchat_conversation_matches_reference(tok, shared_data):
    from lmtune.data.load import load_conversations

    result = load_conversations(shared_data / "sharegpt_fastchat" / "dummy_conversation.json")
    assert len(result.records) == 500
    for conv in result.records[::5]:
        msgs = [m.to_dict() for m in conv.messages]
        turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        out = tokenize_conversation(tok, msgs)
        assert (out.input_ids, out.labels) == reference_labels(tok, msgs, turns), conv.source


# --- The fast paths: the compiled-template renderer and batched tokenisation ---------------------------

ALPACA = "alpaca_en_stanford/alpaca_small.json"
FASTCHAT = "sharegpt_fastchat/dummy_conversation.json"


def _records(shared_data, which: str):
    if which == "glaive":
        from lmtune.data.registry import registry_spec
        from lmtune.data.sources import load_file

        spec = registry_spec(shared_data / "llamafactory" / "dataset_info.json", "glaive_toolcall_en_demo")
        return load_file(spec, "sft", on_error="fail").records
    from lmtune.data.load import load_conversations

    return load_conversations(shared_data / which).records


@pytest.mark.parametrize(
    ("data", "template"),
    [
        (ALPACA, "smollm2"),
        (ALPACA, "alpaca"),
        (FASTCHAT, "smollm2"),
        ("glaive", "smollm2"),
        ("glaive", "qwen25"),
    ],
)
def test_renderer_renders_exactly_what_apply_chat_template_renders(tok, shared_data, data, template):
    """Every string masking renders (each prefix, with and without the generation prompt), over the whole
    2,000-record benchmark set (model template and lmtune's alpaca fallback), multi-turn chats and tool
    calls (lmtune's fallback and a template that renders tools itself): the compiled-template fast path
    must equal transformers' public API."""
    from lmtune.tokenize.templates import to_template_messages

    if template == "qwen25":
        from tests.tokenize.test_tools import QWEN25

        tok.chat_template = QWEN25
    elif template == "alpaca":  # lmtune's fallback: uses the eos_token variable
        apply_template_choice(tok, "alpaca")
    renderer = ChatRenderer(tok)
    assert renderer.compiled is not None  # the fast path is the one under test
    records = _records(shared_data, data)
    assert len(records) >= 300
    checked = 0
    for conv in records:
        msgs, tools = to_template_messages([m.to_dict() for m in conv.messages], conv.tools, tok)
        for end in range(1, len(msgs) + 1):
            for gen in (False, True):
                fast = renderer(msgs[:end], tools, generation_prompt=gen)
                assert fast == render(tok, msgs[:end], tools, generation_prompt=gen), (conv.source, end, gen)
                checked += 1
    assert checked >= 4 * len(records)


def test_without_a_compiled_template_the_same_samples_come_out(tok, shared_data, monkeypatch):
    """The fallback (apply_chat_template per call) and the fast path give identical samples."""
    from lmtune.tokenize import masking

    convs = [([m.to_dict() for m in c.messages], c.tools) for c in _records(shared_data, "glaive")[:40]]
    fast = tokenize_conversations(tok, convs, max_length=8192)
    monkeypatch.setattr(masking, "_compiled_template", lambda template: None)
    assert ChatRenderer(tok).compiled is None
    slow = tokenize_conversations(tok, convs, max_length=8192)
    assert [(s.input_ids, s.labels) for s in fast] == [(s.input_ids, s.labels) for s in slow]


def test_batched_tokenisation_matches_the_reference_for_every_record(tok, shared_data):
    """Many conversations in one call (tokens of one must never pick up another's spans), with a record
    that cannot be trained in the middle: every outcome is in its record's place and matches the
    token-level reference."""
    convs = [[m.to_dict() for m in c.messages] for c in _records(shared_data, FASTCHAT)[::5]]
    untrainable = copy.deepcopy(MULTI[:2])
    untrainable[1]["weight"] = 0
    convs.insert(7, untrainable)
    for train_on in ("all", "last"):
        outs = tokenize_conversations(tok, [(m, None) for m in convs], max_length=4096, train_on=train_on)
        assert len(outs) == len(convs)
        assert isinstance(outs[7], MaskingError) and outs[7].reason == "no_trained_turn"
        for msgs, out in zip(convs[:7] + convs[8:], outs[:7] + outs[8:]):
            turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
            turns = turns if train_on == "all" else turns[-1:]
            assert (out.input_ids, out.labels) == reference_labels(tok, msgs, turns)


def test_benchmark_set_matches_the_reference(tok, shared_data):
    records = _records(shared_data, ALPACA)
    assert len(records) == 2000
    sample = records[::20]
    outs = tokenize_conversations(tok, [([m.to_dict() for m in c.messages], None) for c in sample])
    for conv, out in zip(sample, outs):
        msgs = [m.to_dict() for m in conv.messages]
        assert (out.input_ids, out.labels) == reference_labels(tok, msgs, [1]), conv.source


def _overlaps_by_loop(offsets, lengths, spans):
    out, pos = [], 0
    for n, conv_spans in zip(lengths, spans):
        for start, end in offsets[pos : pos + n]:
            out.append(any(start < b and end > a for a, b in conv_spans))
        pos += n
    return out


def test_overlap_arithmetic_equals_the_per_token_rule():
    """`_overlaps` against the plain rule `start < b and end > a`, on random conversations with
    zero-width tokens, tokens straddling span edges, and spans that touch, nest or overlap."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        offsets, lengths, text_lengths, spans = [], [], [], []
        for _ in range(rng.integers(1, 6)):
            size = int(rng.integers(0, 40))
            cuts = np.sort(rng.integers(0, size + 1, size=int(rng.integers(0, 30))))
            starts = cuts
            ends = np.minimum(size, cuts + rng.integers(0, 4, size=len(cuts)))  # some zero-width
            offsets += list(zip(starts.tolist(), ends.tolist()))
            lengths.append(len(cuts))
            text_lengths.append(size)
            conv_spans = []
            for _ in range(rng.integers(0, 4)):
                a = int(rng.integers(0, size + 1))
                conv_spans.append((a, int(rng.integers(a, size + 1))))
            if conv_spans and rng.random() < 0.3:  # a span touching the previous one
                conv_spans.append((conv_spans[-1][1], size))
            spans.append([s for s in conv_spans if s[1] > s[0]])
        got = _overlaps(
            np.asarray(offsets, dtype=np.int64).reshape(-1, 2),
            np.asarray(lengths, dtype=np.int64),
            np.asarray(text_lengths, dtype=np.int64),
            spans,
        )
        assert got.tolist() == _overlaps_by_loop(offsets, lengths, spans)


def test_a_fast_path_that_disagrees_on_the_probe_is_not_used(tok, monkeypatch):
    from lmtune.tokenize import masking

    class Wrong:
        def render(self, **variables):
            return "<something else>"

    monkeypatch.setattr(masking, "_compiled_template", lambda template: Wrong())
    assert ChatRenderer(tok).compiled is None
    out = tokenize_conversation(tok, MULTI)
    assert (out.input_ids, out.labels) == reference_labels(tok, MULTI, [1, 3, 5])


def test_a_template_that_rejects_the_probe_takes_the_standard_path(tok):
    # A template with input checks of its own that the probe conversation happens to fail.
    check = "{% if messages[0]['content'] == 'Hi' %}{{ raise_exception('say more than Hi') }}{% endif %}"
    tok.chat_template = check + tok.chat_template
    assert ChatRenderer(tok).compiled is None
    out = tokenize_conversation(tok, MULTI)
    assert (out.input_ids, out.labels) == reference_labels(tok, MULTI, [1, 3, 5])
