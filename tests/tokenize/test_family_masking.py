"""Masking with every family's real tokenizer and chat template, checked against an independent method.

The implementation locates trained turns by *character* spans in one rendering (tokenize/spans.py).
The reference here never looks at characters: for each assistant message it renders the whole
conversation a second time with only that message's content replaced, tokenises both with
`apply_chat_template(tokenize=True)` and takes the tokens that differ (common token prefix and suffix
removed) as "the tokens of this message's content as they appear in the full rendering". Then:

- input ids == apply_chat_template(whole conversation), tokenised by transformers itself;
- every content token of a trained message is trained, none of a weight-0 message;
- the trained run around it ends with the family's end-of-turn token (plus only whitespace or that
  token again), and begins with nothing but what the template inserts for the model to write (an empty
  or filled think block) -- never a role header;
- every trained token lies in such a run (no system, user or header token is trained);
- reasoning_content is trained exactly when the template renders it (found by the same diff).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
from tests.families import TEST_FAMILIES

from lmtune.data.records import Conversation
from lmtune.errors import ConfigError, DataError
from lmtune.tokenize.dataset import tokenize_records
from lmtune.tokenize.masking import IGNORE, MaskingError, tokenize_conversation, tokenize_conversations
from lmtune.tokenize.templates import SYSTEM_MERGE_NOTE, check_system_role, has_system_role, merge_system
from lmtune.tokenize.view import decoded_runs

CONV = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "你好，今天天气怎么样？"},
    {"role": "assistant", "content": "Skip this answer.", "weight": 0},
    {"role": "user", "content": "Say hello in Chinese."},
    {
        "role": "assistant",
        "content": "你好！很高兴见到你。",
        "reasoning_content": "They want a Chinese greeting.",
    },
    {"role": "user", "content": "And in English?"},
    {"role": "assistant", "content": "Hello, nice to meet you.", "reasoning_content": "Now English."},
]
ENDS_WITH_REASONING = [*CONV[:4], CONV[4]]  # the reasoning turn is the last one
SHORT = [  # one-letter answers also occur inside control tokens (<|im_end|>, <|end|>) before them
    CONV[0],
    {"role": "user", "content": "q"},
    {"role": "assistant", "content": "e"},
    {"role": "user", "content": "r"},
    {"role": "assistant", "content": "d"},
]


@contextmanager
def template(tok, text):
    """`tok` with another chat template for the duration (a deepcopy of a fast tokenizer costs seconds)."""
    before = tok.chat_template
    tok.chat_template = text
    try:
        yield tok
    finally:
        tok.chat_template = before


@pytest.fixture(scope="module")
def tokenizers(family_tokenizer_dir):
    from transformers import AutoTokenizer

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = AutoTokenizer.from_pretrained(family_tokenizer_dir(name))
        return cache[name]

    return get


def template_messages(tok, conv):
    """The conversation as the model sees it; for a template that refuses a system message (found by
    trying it here, not by family name) the system text opens the first user turn."""
    msgs = [{k: v for k, v in m.items() if k != "weight"} for m in conv]
    try:
        tok.apply_chat_template(msgs[:2], tokenize=False)
        return msgs
    except Exception:  # noqa: BLE001 - Gemma: "System role not supported"
        first = {**msgs[1], "content": msgs[0]["content"] + "\n\n" + msgs[1]["content"]}
        return [first, *msgs[2:]]


def ids_of(tok, msgs):
    out = tok.apply_chat_template(msgs, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def replacement(text: str) -> str:
    """A different text sharing neither first nor last character with `text`."""
    for cand in ("Zebra quartz 42", "Quokka vivid 17", "Mango lilac 93"):
        if cand[0] != text[0] and cand[-1] != text[-1] and cand[0] not in text[:2]:
            return cand
    raise AssertionError(text)


def differing_tokens(a: list[int], b: list[int]) -> range:
    """Positions in `a` that differ from `b` once their common prefix and suffix are removed."""
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    s = 0
    while s < min(len(a), len(b)) - p and a[-1 - s] == b[-1 - s]:
        s += 1
    return range(p, len(a) - s)


def region(tok, msgs, j, field):
    changed = copy.deepcopy(msgs)
    changed[j][field] = replacement(msgs[j][field])
    return differing_tokens(ids_of(tok, msgs), ids_of(tok, changed))


def run_around(labels, pos):
    lo, hi = pos, pos
    while lo > 0 and labels[lo - 1] != IGNORE:
        lo -= 1
    while hi + 1 < len(labels) and labels[hi + 1] != IGNORE:
        hi += 1
    return range(lo, hi + 1)


def check_family(tok, fam, conv):
    msgs = template_messages(tok, conv)
    shift = len(msgs) - len(conv)
    full = ids_of(tok, msgs)
    out = tokenize_conversation(tok, conv, max_length=4096)
    assert out.input_ids == full
    eot = tok.convert_tokens_to_ids(fam.eos)
    covered = set()
    for j, m in enumerate(conv):
        if m["role"] != "assistant":
            continue
        content = region(tok, msgs, j + shift, "content")
        assert len(content) > 0
        trained = [out.labels[k] != IGNORE for k in content]
        if m.get("weight") == 0:
            assert not any(trained), f"weight-0 answer {j} trained"
            continue
        assert all(out.labels[k] == full[k] for k in content), f"answer {j} not trained"
        run = run_around(out.labels, content[0])
        covered.update(run)
        after = [full[k] for k in run if k > content[-1]]
        assert after and after[0] == eot, tok.decode(after)
        assert all(t == eot or tok.decode([t]).strip() == "" for t in after[1:]), tok.decode(after)
        before = tok.decode([full[k] for k in run if k < content[0]]).strip()
        assert before == "" or (before.startswith("<think>") and before.endswith("</think>")), before
        if m.get("reasoning_content"):
            shown = region(tok, msgs, j + shift, "reasoning_content")
            assert all(k in run for k in shown)  # trained exactly where the template renders it
    assert covered == {k for k, lab in enumerate(out.labels) if lab != IGNORE}


@pytest.mark.parametrize("name", list(TEST_FAMILIES))
def test_trained_ids_match_an_independent_diff_for_every_family(tokenizers, name):
    tok = tokenizers(name)
    check_family(tok, TEST_FAMILIES[name], CONV)
    check_family(tok, TEST_FAMILIES[name], ENDS_WITH_REASONING)
    check_family(tok, TEST_FAMILIES[name], SHORT)


def test_qwen3_trains_the_reasoning_it_renders_and_not_the_dropped_one(tokenizers):
    """Qwen3 renders reasoning only after the last user query: the last turn's is trained, an earlier
    turn's is not in the input at all (the template drops it), and the earlier answer is still trained."""
    tok = tokenizers("qwen3")
    out = tokenize_conversation(tok, CONV)
    trained = tok.decode([t for t, lab in zip(out.input_ids, out.labels) if lab != IGNORE])
    assert "Now English." in trained and "Chinese greeting" not in tok.decode(out.input_ids)
    assert "你好！很高兴见到你。" in trained


def test_think_block_inside_content_is_trained_where_rendered(tokenizers):
    tok = tokenizers("qwen3")
    conv = [*CONV[:4], {"role": "assistant", "content": "<think>\nGreet them.\n</think>\n\n你好！"}]
    out = tokenize_conversation(tok, conv)
    trained = tok.decode([t for t, lab in zip(out.input_ids, out.labels) if lab != IGNORE])
    assert trained == "<think>\nGreet them.\n</think>\n\n你好！<|im_end|>\n"


# ---------------------------------------------------------------- system role


def test_gemma_system_is_merged_into_the_first_user_turn_and_untrained(tokenizers):
    tok = tokenizers("gemma2")
    assert not has_system_role(tok) and has_system_role(tokenizers("qwen2"))
    out = tokenize_conversation(tok, CONV[:3] + [CONV[3], CONV[4]])
    merged = [{"role": "user", "content": merge_system(CONV[0]["content"], CONV[1]["content"])}, CONV[3]]
    expected = ids_of(tok, [merged[0], {"role": "assistant", "content": "Skip this answer."}, *CONV[3:5]])
    assert out.input_ids == expected
    text = tok.decode(out.input_ids)
    assert "You are a terse assistant.\n\n你好" in text
    trained = tok.decode([t for t, lab in zip(out.input_ids, out.labels) if lab != IGNORE])
    assert "terse" not in trained


def test_a_template_that_drops_system_messages_is_detected_by_trying_it(tokenizers):
    drops = (
        "{% for m in messages %}{% if m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with template(tokenizers("qwen2"), drops) as tok:
        assert not has_system_role(tok)
        out = tokenize_conversation(tok, [CONV[0], CONV[1], CONV[4]])
    assert "You are a terse assistant.\n\n你好" in tok.decode(out.input_ids)


def test_system_merge_never_is_a_clear_error(tokenizers):
    tok = tokenizers("gemma2")
    recs = [Conversation.from_dict({"messages": CONV[:2] + [CONV[4]]}, source="f.jsonl#1")]
    with pytest.raises(ConfigError, match="no system role.*data.system_merge"):
        tokenize_records(recs, tok, max_length=512, train_on="all", system_merge="never")
    assert tokenize_records(recs, tok, max_length=512, train_on="all").samples  # auto merges


# ---------------------------------------------------------------- errors raised by templates

RAISES_ON_TOOL = (
    "{% for m in messages %}{% if m['role'] == 'user' and 'forbidden' in m['content'] %}"
    "{{ raise_exception('Only polite questions are supported') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HERMES_LIKE = (  # iterates `tools` without checking it (Hermes-3 tool_use: TypeError on None)
    "{% for t in tools %}{{ t['function']['name'] }}{% endfor %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_template_raise_is_a_reject_with_its_message_and_a_fix(tokenizers):
    with template(tokenizers("qwen2"), RAISES_ON_TOOL) as tok:
        check_raises(tok)


def check_raises(tok):
    bad = [{"role": "user", "content": "a forbidden question"}, {"role": "assistant", "content": "No."}]
    good = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    err, ok = tokenize_conversations(tok, [(bad, None), (good, None)])
    assert isinstance(err, MaskingError) and err.reason == "template_error"
    assert "Only polite questions are supported" in str(err) and "Fix:" in str(err)
    assert not isinstance(ok, MaskingError) and ok.num_trained > 0
    recs = [
        Conversation.from_dict({"messages": m}, source=f"d.jsonl#{i}") for i, m in enumerate([bad, good], 1)
    ]
    tokset = tokenize_records(recs, tok, max_length=512, train_on="all")
    assert [(r.file, r.record, r.reason) for r in tokset.rejects] == [("d.jsonl", 1, "template_error")]


def test_none_iteration_inside_a_template_is_one_clear_error_when_every_record_fails(tokenizers):
    with template(tokenizers("qwen2"), HERMES_LIKE) as tok:
        check_hermes(tok)


def check_hermes(tok):
    with pytest.raises(TypeError):  # what apply_chat_template itself does
        tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    recs = [Conversation.from_dict({"messages": msgs}, source=f"tools.jsonl#{i}") for i in (1, 2)]
    with pytest.raises(
        DataError, match=r"tools.jsonl: the chat template fails on every one of the 2 records.*NoneType"
    ):
        tokenize_records(recs, tok, max_length=512, train_on="all")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    (out,) = tokenize_conversations(tok, [(msgs, tools)])  # with tools it renders: masked as usual
    assert not isinstance(out, MaskingError) and out.num_trained > 0


# ---------------------------------------------------------------- inspect view


@pytest.mark.parametrize("name", ["phi3", "mistral"])
def test_inspect_view_decodes_runs_with_sentencepiece_spaces(tokenizers, name):
    tok = tokenizers(name)
    out = tokenize_conversation(tok, CONV)
    runs = decoded_runs(tok, out.input_ids, out.labels)
    assert "".join(text for text, _ in runs) == tok.decode(out.input_ids)
    assert any("Say hello in Chinese." in text for text, trained in runs if not trained)
    assert any("Hello, nice to meet you." in text for text, trained in runs if trained)
    assert [trained for _, trained in runs] == [False, True, False, True]


def test_the_user_is_told_once_what_happens_to_system_messages(tokenizers):
    recs = [Conversation.from_dict({"messages": CONV}, source="d.jsonl#1")]
    assert check_system_role(tokenizers("gemma2"), recs, "auto") == SYSTEM_MERGE_NOTE
    assert check_system_role(tokenizers("qwen2"), recs, "auto") is None
    dropped = check_system_role(tokenizers("mistral"), recs, "auto")  # only written into a final user turn
    assert dropped is not None and "d.jsonl#1" in dropped and "not seen in training" in dropped
    assert "You are a terse assistant." not in tokenizers("mistral").decode(
        tokenize_conversation(tokenizers("mistral"), CONV).input_ids
    )
