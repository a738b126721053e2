"""Conversation rules: each broken rule gives its own stable reason and the offending field."""

from __future__ import annotations

import pytest

from lmtune.data.records import Conversation, Message
from lmtune.data.validate import RecordError, validate_conversation

CALL = [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]


def conv(*spec) -> Conversation:
    """conv(("user", "q"), ("assistant", "a", {"weight": 0})) -> Conversation."""
    return Conversation(
        [Message(role, content, **(extra[0] if extra else {})) for role, content, *extra in spec]
    )


def reason_field(c: Conversation) -> tuple[str, str | None]:
    with pytest.raises(RecordError) as err:
        validate_conversation(c)
    assert "Fix:" in str(err.value)
    return err.value.reason, err.value.field


@pytest.mark.parametrize(
    "c",
    [
        conv(("user", "q"), ("assistant", "a")),
        conv(("system", "s"), ("user", "q"), ("assistant", "a"), ("user", "q2"), ("assistant", "a2")),
        conv(("system", "s1"), ("system", "s2"), ("user", "q"), ("assistant", "a")),
        conv(("user", "q"), ("assistant", "", {"tool_calls": CALL})),  # tool call as the last message
        conv(
            ("user", "q"),
            ("assistant", "", {"tool_calls": CALL * 2}),
            ("tool", "1"),
            ("tool", "2"),
            ("assistant", "done"),
        ),
        conv(
            ("user", "q"),
            ("assistant", "a", {"weight": 0}),
            ("user", "q2"),
            ("assistant", "b", {"weight": 1}),
        ),
        conv(("user", "q"), ("assistant", "a", {"weight": 1.0})),
    ],
)
def test_valid(c):
    validate_conversation(c)


@pytest.mark.parametrize(
    ("c", "reason", "field"),
    [
        (conv(), "empty_conversation", "messages"),
        (conv(("user", "q"), ("bot", "a")), "unknown_role", "messages[1].role"),
        (conv(("user", "q"), ("assistant", "a"), ("assistant", "b")), "not_alternating", "messages[2].role"),
        (conv(("user", "q"), ("user", "q2"), ("assistant", "a")), "not_alternating", "messages[1].role"),
        (conv(("system", "s"), ("assistant", "a")), "not_alternating", "messages[1].role"),
        (conv(("user", "q"), ("assistant", "a"), ("user", "q2")), "no_assistant_last", "messages[2].role"),
        (conv(("system", "s")), "no_assistant_last", "messages[0].role"),
        (conv(("user", "q"), ("assistant", "  \n")), "empty_answer", "messages[1].content"),
        (conv(("user", " "), ("assistant", "a")), "empty_prompt", "messages[0].content"),
        (conv(("user", "q"), ("system", "s"), ("assistant", "a")), "misplaced_system", "messages[1].role"),
        (
            conv(("user", "q"), ("assistant", "a"), ("tool", "r"), ("assistant", "b")),
            "misplaced_tool",
            "messages[2].role",
        ),
        (
            conv(
                ("user", "q"),
                ("assistant", "", {"tool_calls": CALL}),
                ("tool", "r"),
                ("user", "q2"),
                ("assistant", "b"),
            ),
            "misplaced_tool",
            "messages[3].role",
        ),
        (
            conv(("user", "q"), ("assistant", "", {"tool_calls": CALL}), ("tool", "r")),
            "no_assistant_last",
            "messages[2].role",
        ),
        (conv(("user", "q"), ("assistant", "a", {"weight": 2})), "bad_weight", "messages[1].weight"),
        (conv(("user", "q"), ("assistant", "a", {"weight": True})), "bad_weight", "messages[1].weight"),
        (conv(("user", "q"), ("assistant", "a", {"weight": "1"})), "bad_weight", "messages[1].weight"),
        (conv(("user", "q", {"weight": 1}), ("assistant", "a")), "bad_weight", "messages[0].weight"),
        (conv(("user", "q"), ("assistant", "a", {"weight": 0})), "nothing_to_train", "messages"),
        (
            conv(("user", "q", {"tool_calls": CALL}), ("assistant", "a")),
            "bad_tool_call",
            "messages[0].tool_calls",
        ),
        (
            conv(("user", "q"), ("assistant", "", {"tool_calls": [{"function": {}}]})),
            "bad_tool_call",
            "messages[1].tool_calls[0].function.name",
        ),
        (
            conv(
                ("user", "q"),
                ("assistant", "", {"tool_calls": [{"function": {"name": "f", "arguments": {}}}]}),
            ),
            "bad_tool_call",
            "messages[1].tool_calls[0].function.arguments",
        ),
        (conv(("user", "q"), ("assistant", None)), "wrong_type", "messages[1].content"),
    ],
)
def test_invalid(c, reason, field):
    assert reason_field(c) == (reason, field)


def test_message_lists_the_roles():
    with pytest.raises(RecordError, match="user, assistant, assistant"):
        validate_conversation(conv(("user", "q"), ("assistant", "a"), ("assistant", "b")))


def test_record_error_parts():
    err = RecordError("missing_field", "no output.", "output", "add it.")
    assert (err.reason, err.message, err.field, err.hint) == (
        "missing_field",
        "no output.",
        "output",
        "add it.",
    )
    assert str(err) == "no output. Fix: add it."
    assert str(RecordError("x", "plain.")) == "plain."
