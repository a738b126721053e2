"""Check that a canonical conversation is something SFT can train on.

Every rule here guards against a silent training bug: a conversation that ends on a user turn
teaches nothing, two assistant turns in a row render as a turn the template never produces, an
empty answer trains the model to stop at once, an all-weight-0 record contributes no loss. Each
failure names the offending field ("messages[3].role") with a short stable `reason` code so that
rejects can be grouped and counted.
"""

from __future__ import annotations

from typing import Any

from lmtune.data.records import ROLES, Conversation, Message


class RecordError(Exception):
    """One record cannot be used; `reason` is a stable code, `str(err)` the sentence plus the fix."""

    def __init__(self, reason: str, message: str, field: str | None = None, hint: str | None = None):
        self.reason, self.message, self.field, self.hint = reason, message, field, hint
        super().__init__(message + (f" Fix: {hint}" if hint else ""))


def validate_conversation(conv: Conversation, *, open_end: bool = False) -> None:
    """Raise `RecordError` for the first rule `conv` breaks; return None when it is trainable.

    `open_end` (evaluation prompts) also accepts a conversation that ends with a user turn, for the
    model to answer; such a conversation has no answer to train on, so nothing_to_train is not checked."""
    msgs = conv.messages
    if not msgs:
        raise RecordError("empty_conversation", "the conversation has no messages.", "messages",
                          "give it at least a user message and an assistant answer.")  # fmt: skip
    for i, m in enumerate(msgs):
        _check_message(i, m)
    _check_order(msgs, open_end=open_end)
    for i, m in enumerate(msgs):
        if m.role == "assistant" and not m.tool_calls and not m.content.strip():
            raise RecordError("empty_answer", f"assistant message {i} is empty.", f"messages[{i}].content",
                              "write the answer, or drop this record.")  # fmt: skip
        if m.role == "user" and not m.content.strip():
            raise RecordError("empty_prompt", f"user message {i} is empty.", f"messages[{i}].content",
                              "write the user's question, or drop this record.")  # fmt: skip
    if open_end and msgs[-1].role == "user":
        return
    if all(m.weight == 0 for m in msgs if m.role == "assistant"):
        raise RecordError("nothing_to_train", "every assistant message has weight 0, so nothing would be trained.",
                          "messages", "set weight 1 (or remove weight) on at least one assistant message.")  # fmt: skip


def _check_message(i: int, m: Message) -> None:
    f = f"messages[{i}]"
    if m.role not in ROLES:
        raise RecordError("unknown_role", f"role {m.role!r} is not one of {', '.join(ROLES)}.", f"{f}.role",
                          "use system, user, assistant or tool (ShareGPT names such as human/gpt need `format: sharegpt`).")  # fmt: skip
    if not isinstance(m.content, str):
        raise RecordError("wrong_type", f"content must be a string, got {_type(m.content)}.", f"{f}.content",
                          "store the message text as a JSON string.")  # fmt: skip
    if m.weight is not None:
        if isinstance(m.weight, bool) or not isinstance(m.weight, (int, float)) or m.weight not in (0, 1):
            raise RecordError("bad_weight", f"weight must be 0 or 1, got {m.weight!r}.", f"{f}.weight",
                              "use 0 (do not train on this message) or 1 (train on it), or leave it out.")  # fmt: skip
        if m.role != "assistant":
            raise RecordError("bad_weight", f"weight is only allowed on assistant messages, not {m.role}.",
                              f"{f}.weight", "remove the weight from this message.")  # fmt: skip
    if m.tool_calls is not None:
        if m.role != "assistant":
            raise RecordError("bad_tool_call", f"only assistant messages may have tool_calls, not {m.role}.",
                              f"{f}.tool_calls", "move the tool call into an assistant message.")  # fmt: skip
        _check_tool_calls(f, m.tool_calls)
    if m.reasoning_content is not None and m.role != "assistant":
        raise RecordError("bad_reasoning", f"reasoning_content is only allowed on assistant messages, not {m.role}.",
                          f"{f}.reasoning_content", "move the reasoning into the assistant answer it belongs to.")  # fmt: skip


def _check_tool_calls(f: str, calls: Any) -> None:
    hint = 'use [{"type": "function", "function": {"name": "...", "arguments": "{...}"}}].'
    if not isinstance(calls, list) or not calls:
        raise RecordError("bad_tool_call", f"tool_calls must be a non-empty list, got {_type(calls)}.",
                          f"{f}.tool_calls", hint)  # fmt: skip
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise RecordError("bad_tool_call", "a tool call needs a function with a name.",
                              f"{f}.tool_calls[{j}].function.name", hint)  # fmt: skip
        if not isinstance(fn.get("arguments", ""), str):
            raise RecordError("bad_tool_call", "tool call arguments must be a JSON string.",
                              f"{f}.tool_calls[{j}].function.arguments", hint)  # fmt: skip


def _check_order(msgs: list[Message], *, open_end: bool = False) -> None:
    """system* then user, assistant, [tool+, assistant]*, user, ... ending with assistant."""
    roles = [m.role for m in msgs]
    seq = ", ".join(roles)
    start = 0
    while start < len(msgs) and roles[start] == "system":
        start += 1
    prev: Message | None = None
    for i in range(start, len(msgs)):
        m, f = msgs[i], f"messages[{i}].role"
        if m.role == "system":
            raise RecordError("misplaced_system", f"a system message may only come first (roles: {seq}).", f,
                              "move it to the start or merge it into the first system message.")  # fmt: skip
        if m.role == "tool":
            if prev is None or not (prev.role == "tool" or (prev.role == "assistant" and prev.tool_calls)):
                raise RecordError("misplaced_tool", "a tool message must follow an assistant message with "
                                  f"tool_calls (roles: {seq}).", f,
                                  "put the tool result right after the assistant's tool call.")  # fmt: skip
        elif prev is not None and prev.role == "tool" and m.role != "assistant":
            raise RecordError("misplaced_tool", f"a tool result must be followed by an assistant message (roles: {seq}).",
                              f, "add the assistant's reply to the tool result.")  # fmt: skip
        elif m.role == "user" and prev is not None and prev.role != "assistant":
            raise RecordError("not_alternating", f"two user messages in a row (roles: {seq}).", f,
                              "merge them into one, or add the assistant answer between them.")  # fmt: skip
        elif m.role == "assistant" and (prev is None or prev.role == "assistant"):
            what = "the first message after the system prompt must be a user message" if prev is None else (
                "two assistant messages in a row")  # fmt: skip
            raise RecordError("not_alternating", f"{what} (roles: {seq}).", f,
                              "user and assistant messages must alternate, starting with user.")  # fmt: skip
        prev = m
    if roles[-1] != "assistant" and not (open_end and roles[-1] == "user"):
        raise RecordError("no_assistant_last", f"the conversation must end with an assistant message (roles: {seq}).",
                          f"messages[{len(msgs) - 1}].role",
                          "add the assistant answer at the end, or drop the trailing message.")  # fmt: skip


def _type(v: Any) -> str:
    return "null" if v is None else type(v).__name__
