"""Detect which dataset format a file uses and convert its records to canonical conversations.

Detection looks only at keys, never at values, so it is fast and predictable; when it cannot
decide it says which keys it saw and how to force a format (`format:`) or rename fields
(`columns:`), instead of guessing. `columns` maps a format's canonical field names to the file's
own names and may use dotted paths with list indexes ("instances.0.output") for nested data.
"""

from __future__ import annotations

import json
from typing import Any

from lmtune.data.records import Conversation, Message
from lmtune.data.validate import RecordError
from lmtune.errors import DataError

FORMATS = ("openai", "sharegpt", "alpaca", "dolly", "prompt_completion", "preference", "text")
SFT_FORMATS = ("openai", "sharegpt", "alpaca", "dolly", "prompt_completion")

# Canonical field names each format understands (the keys `columns` may map).
FIELDS: dict[str, tuple[str, ...]] = {
    "openai": (
        "messages",
        "role",
        "content",
        "weight",
        "tool_calls",
        "name",
        "tools",
        "reasoning_content",
        "tool_call_id",
    ),
    "sharegpt": ("conversations", "from", "value", "system", "tools"),
    "alpaca": ("instruction", "input", "output", "system", "history", "tools"),
    "dolly": ("instruction", "context", "response", "system"),
    "prompt_completion": ("prompt", "completion", "system"),
    "preference": ("prompt", "chosen", "rejected"),
    "text": ("text",),
}
# Fields that live inside each message rather than at the top level of a record.
_MESSAGE_FIELDS = frozenset(
    {"role", "content", "weight", "tool_calls", "name", "from", "value", "reasoning_content", "tool_call_id"}
)
# Names the reasoning of an answer goes by (OpenAI-compatible APIs, DeepSeek, gpt-oss), read in this order.
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")
_SIGNATURES = (
    "openai (messages); sharegpt (conversations); alpaca (instruction, input, output); dolly (instruction, "
    "context, response); prompt_completion (prompt, completion); preference (chosen, rejected); text (text)"
)
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant",
    "system": "system",
    "function_call": "function_call",
    "observation": "tool", "tool": "tool",
}  # fmt: skip
_MISSING = object()


# ---------------------------------------------------------------- detection


def detect_format(samples: list[dict[str, Any]], *, file: str, columns: dict[str, str] | None = None) -> str:
    """Pick the format from the keys of the first records; raise DataError when unsure.

    Records whose keys match no format are ignored here (they become rejects later); records that
    match different formats, or one record matching two, are an error rather than a guess.
    """
    votes: dict[str, list[int]] = {}
    for i, rec in enumerate(samples[:20], start=1):
        found = _candidates(_apply_top_columns(rec, columns))
        if len(found) > 1:
            raise DataError(
                f"cannot tell the data format: record {i} matches {' and '.join(found)} (keys: {_keys([rec])}).",
                file=file,
                hint=f"set `format:` to the one you mean ({' or '.join(found)}).",
            )
        if found:
            votes.setdefault(found[0], []).append(i)
    if len(votes) > 1:
        seen = "; ".join(f"{fmt} (records {', '.join(map(str, idx[:5]))})" for fmt, idx in votes.items())
        raise DataError(
            f"records look like different formats: {seen}.",
            file=file,
            hint="keep one format per file, or set `format:` to the one you mean.",
        )
    if not votes:
        keys = _keys(samples[:20])
        extra = (
            " A 'label' field suggests classification data (`task: classification`)."
            if "label" in keys
            else ""
        )
        nested = [k for k in keys if isinstance(samples[0].get(k), list) and samples[0][k]]
        if nested:
            extra += f" Nested fields can be mapped with dotted paths, e.g. output: {nested[0]}.0.output."
        raise DataError(
            f"cannot tell the data format: the records have keys {keys}, which match none of the known "
            f"formats: {_SIGNATURES}.{extra}",
            file=file,
            hint="set `format:` to force one, or map your field names with `columns:`, "
            "e.g. columns: {instruction: question, output: answer}.",
        )
    fmt = next(iter(votes))
    if fmt == "openai" and all(isinstance(s.get("label"), bool) for s in samples[:20]):
        raise DataError(
            "the records have 'messages' plus a true/false 'label': this is KTO data (desirable/undesirable "
            "answers); training SFT on it would also teach the undesirable answers.",
            file=file,
            hint="keep only the records with label true, or set `format: openai` to train on all of them.",
        )
    return fmt


def _candidates(rec: dict[str, Any]) -> list[str]:
    keys = rec.keys()
    if ({"chosen", "rejected"} <= keys or {"preferred_output", "non_preferred_output"} <= keys
            or {"response_j", "response_k"} <= keys):  # fmt: skip
        return ["preference"]
    found = []
    msgs = rec.get("messages")
    if isinstance(msgs, list):
        first = msgs[0] if msgs else None
        sharegpt_like = isinstance(first, dict) and "from" in first and "role" not in first
        found.append("sharegpt" if sharegpt_like else "openai")
    if isinstance(rec.get("conversations"), list) and "sharegpt" not in found:
        found.append("sharegpt")
    if "instruction" in keys and "output" in keys:
        found.append("alpaca")
    if "instruction" in keys and "response" in keys:
        found.append("dolly")
    if "prompt" in keys and "completion" in keys:
        found.append("prompt_completion")
    if not found and "text" in keys:
        found.append("text")
    return found


def _apply_top_columns(rec: dict[str, Any], columns: dict[str, str] | None) -> dict[str, Any]:
    """The record as detection should see it: mapped top-level fields under their canonical names."""
    if not columns:
        return rec
    view = dict(rec)
    for canonical, path in columns.items():
        if canonical in _MESSAGE_FIELDS:
            continue
        value = _resolve(rec, path)
        if value is not _MISSING:
            view[canonical] = value
    return view


def _keys(records: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        seen.update(dict.fromkeys(r))
    return list(seen)[:30]


def wrong_task_message(fmt: str) -> tuple[str, str]:
    """(message, hint) for a preference or raw-text file given to SFT."""
    if fmt == "preference":
        return (
            "this file holds preference data (chosen/rejected answer pairs), which belongs to "
            "`task: preference`, not SFT.",
            "set `task: preference` for this data, or give SFT a file of conversations or instruction/output records.",
        )
    return (
        "this file holds raw-text data (a 'text' field), which belongs to `task: pretrain`, not SFT.",
        "set `task: pretrain` for this data, or give SFT a file of conversations or instruction/output records.",
    )


# ---------------------------------------------------------------- conversion


def to_conversation(
    data: dict[str, Any],
    fmt: str,
    *,
    columns: dict[str, str] | None = None,
    system: str | None = None,
    roles: dict[str, str] | None = None,
) -> Conversation:
    """Convert one raw record of format `fmt`; raise RecordError naming the field when it does not fit.

    `roles` (ShareGPT only) maps our roles to the file's speaker names, e.g. {user: "Q", assistant: "A"}.
    """
    if fmt in ("preference", "text"):
        msg, hint = wrong_task_message(fmt)
        raise RecordError("wrong_task", msg, None, hint)
    convert = _CONVERTERS.get(fmt)
    if convert is None:
        raise DataError(f"unknown format '{fmt}'.", hint=f"use one of {', '.join(FORMATS)}.")
    cols = columns or {}
    conv = _from_sharegpt(data, cols, roles) if fmt == "sharegpt" else convert(data, cols)
    if system is not None and not (conv.messages and conv.messages[0].role == "system"):
        conv.messages.insert(0, Message("system", system))
    return conv


def _from_alpaca(data: dict[str, Any], cols: dict[str, str]) -> Conversation:
    msgs = _system(data, cols)
    history = _get(data, cols, "history", optional=True)
    if history is not None:
        label = cols.get("history", "history")
        if not isinstance(history, list):
            raise _wrong_type(label, "a list of [user, assistant] pairs", history)
        for k, pair in enumerate(history):
            if not (
                isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
            ):
                raise _wrong_type(f"{label}[{k}]", "a [user, assistant] pair of strings", pair)
            msgs += [Message("user", pair[0]), Message("assistant", pair[1])]
    user = _join(_str(data, cols, "instruction"), _str(data, cols, "input", optional=True))
    answer = Message("assistant", _str(data, cols, "output"))
    return Conversation(msgs + [Message("user", user), answer], tools=_tools(data, cols))


def _from_dolly(data: dict[str, Any], cols: dict[str, str]) -> Conversation:
    user = _join(_str(data, cols, "instruction"), _str(data, cols, "context", optional=True))
    msgs = _system(data, cols)
    return Conversation(msgs + [Message("user", user), Message("assistant", _str(data, cols, "response"))])


def _from_prompt_completion(data: dict[str, Any], cols: dict[str, str]) -> Conversation:
    user, answer = _str(data, cols, "prompt"), _str(data, cols, "completion")
    return Conversation(_system(data, cols) + [Message("user", user), Message("assistant", answer)])


def _from_openai(data: dict[str, Any], cols: dict[str, str]) -> Conversation:
    label = cols.get("messages", "messages")
    raw = _get(data, cols, "messages")
    if not isinstance(raw, list):
        raise _wrong_type(label, "a list of {role, content} messages", raw)
    k = {name: cols.get(name, name) for name in FIELDS["openai"]}
    k_role, k_content, k_calls = k["role"], k["content"], k["tool_calls"]
    msgs = []
    for i, m in enumerate(raw):
        f = f"{label}[{i}]"
        if not isinstance(m, dict):
            raise _wrong_type(f, "a {role, content} object", m)
        if k_role not in m:
            raise RecordError("missing_field", f"message {i} has no '{k_role}'.", f"{f}.{k_role}",
                              "give every message a role (system, user, assistant or tool).")  # fmt: skip
        role = m[k_role]
        if not isinstance(role, str):
            raise _wrong_type(f"{f}.{k_role}", "a string", role)
        calls = _tool_calls(m.get(k_calls), f"{f}.{k_calls}")
        if k_content not in m and not calls:
            raise RecordError("missing_field", f"message {i} ({role}) has no '{k_content}'.", f"{f}.{k_content}",
                              "add the message text (only assistant messages with tool_calls may omit it).")  # fmt: skip
        content = _content(m.get(k_content), f"{f}.{k_content}", allow_null=bool(calls))
        name = m.get(k["name"])
        msg = Message(role, content, m.get(k["weight"]), calls, name if isinstance(name, str) else None)
        msg.reasoning_content = _reasoning(m, k["reasoning_content"], f)
        call_id = m.get(k["tool_call_id"])
        msg.tool_call_id = str(call_id) if isinstance(call_id, (str, int)) and call_id != "" else None
        msgs.append(msg)
    return Conversation(msgs, tools=_tools(data, cols))


def _reasoning(m: dict[str, Any], key: str, f: str) -> str | None:
    """The message's reasoning text from the first reasoning field it has (`key` first), or None."""
    for name in (key, *REASONING_FIELDS):
        value = m.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise _wrong_type(f"{f}.{name}", "a string (the answer's reasoning)", value)
        return value
    return None


def speaker_roles(roles: dict[str, str] | None) -> dict[str, str]:
    """Speaker name (lower-case) -> role: the file's own names from `roles` over the usual ones."""
    if not roles:
        return SHAREGPT_ROLES
    return {**SHAREGPT_ROLES, **{speaker.lower(): role for role, speaker in roles.items()}}


def _from_sharegpt(
    data: dict[str, Any], cols: dict[str, str], roles: dict[str, str] | None = None
) -> Conversation:
    speakers = speaker_roles(roles)
    raw = _get(data, cols, "conversations", optional=True)
    label = cols.get("conversations", "conversations")
    if raw is None and "conversations" not in cols and "messages" in data:
        raw, label = data["messages"], "messages"  # ShareGPT turns stored under "messages"
    elif raw is None:
        raw = _get(data, cols, "conversations")  # raises missing_field
    if not isinstance(raw, list):
        raise _wrong_type(label, "a list of {from, value} turns", raw)
    msgs = _system(data, cols)
    for i, turn in enumerate(raw):
        f = f"{label}[{i}]"
        if not isinstance(turn, dict):
            raise _wrong_type(f, "a {from, value} object", turn)
        k_from = cols.get("from") or ("from" if "from" in turn or "role" not in turn else "role")
        k_value = cols.get("value") or ("value" if "value" in turn or "content" not in turn else "content")
        for k in (k_from, k_value):
            if k not in turn:
                raise RecordError("missing_field", f"turn {i} has no '{k}'.", f"{f}.{k}",
                                  "every turn needs a speaker ('from') and a text ('value').")  # fmt: skip
        who, value = turn[k_from], turn[k_value]
        if not isinstance(who, str):
            raise _wrong_type(f"{f}.{k_from}", "a string", who)
        role = speakers.get(who.lower())
        if role is None:
            raise RecordError("unknown_role", f"speaker {who!r} is not a known ShareGPT role.", f"{f}.{k_from}",
                              f"use one of {', '.join(speakers)}, or name the file's speakers with `roles:`, "
                              f"e.g. roles: {{user: {who}}}.")  # fmt: skip
        if role == "function_call":
            msgs.append(Message("assistant", "", tool_calls=_parse_function_call(value, f"{f}.{k_value}")))
        elif isinstance(value, str):
            msgs.append(Message(role, value))
        else:
            raise _wrong_type(f"{f}.{k_value}", "a string", value)
    return Conversation(msgs, tools=_tools(data, cols))


_CONVERTERS = {"openai": _from_openai, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca, "dolly": _from_dolly,
               "prompt_completion": _from_prompt_completion}  # fmt: skip


# ---------------------------------------------------------------- field helpers


def _resolve(data: Any, path: str) -> Any:
    """data[path], or a dotted walk ("instances.0.input") through dicts and list indexes."""
    if isinstance(data, dict) and path in data:
        return data[path]
    cur = data
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def _get(data: dict[str, Any], cols: dict[str, str], name: str, *, optional: bool = False) -> Any:
    path = cols.get(name, name)
    value = _resolve(data, path)
    if value is _MISSING:
        if optional:
            return None
        mapped = f" (mapped from '{name}')" if path != name else ""
        raise RecordError("missing_field", f"the record has no '{path}'{mapped}; its keys are {list(data)[:15]}.",
                          path, f"add '{path}' to every record, or map another field to '{name}' with `columns:`.")  # fmt: skip
    return value


def _str(data: dict[str, Any], cols: dict[str, str], name: str, *, optional: bool = False) -> str:
    value = _get(data, cols, name, optional=optional)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise _wrong_type(cols.get(name, name), "a string", value)
    return value


def _join(first: str, second: str) -> str:
    """Alpaca/Dolly prompt: instruction, then a blank line and the input/context when there is one."""
    if not second.strip():
        return first
    return f"{first}\n\n{second}" if first.strip() else second


def _system(data: dict[str, Any], cols: dict[str, str]) -> list[Message]:
    value = _get(data, cols, "system", optional=True)
    if value is None or value == "":
        return []
    if not isinstance(value, str):
        raise _wrong_type(cols.get("system", "system"), "a string", value)
    return [Message("system", value)]


def _content(value: Any, field: str, *, allow_null: bool) -> str:
    if isinstance(value, str):
        return value
    if value is None and allow_null:
        return ""
    if isinstance(value, list):  # OpenAI content parts: keep text parts only if all are text
        if all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value
        ):
            return "".join(p["text"] for p in value)
        raise _wrong_type(field, "text (image/audio content parts are not supported)", value)
    raise _wrong_type(field, "a string", value)


def _tool_calls(value: Any, field: str) -> list[dict[str, Any]] | None:
    """OpenAI tool_calls, with dict arguments serialised to the JSON string the format requires."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise _wrong_type(field, "a list of tool calls", value)
    out = []
    for call in value:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), (dict, list)):
            call = {**call, "function": {**fn, "arguments": json.dumps(fn["arguments"], ensure_ascii=False)}}
        out.append(call)
    return out


def _parse_function_call(value: Any, field: str) -> list[dict[str, Any]]:
    """ShareGPT function_call value ('{"name": ..., "arguments": {...}}', or a list) -> tool_calls."""
    hint = 'the value must be JSON like {"name": "get_weather", "arguments": {"city": "Paris"}}.'
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RecordError(
                "bad_tool_call", f"the function_call value is not valid JSON ({e.msg}).", field, hint
            ) from None
    calls = value if isinstance(value, list) else [value]
    out = []
    for call in calls:
        if not (isinstance(call, dict) and isinstance(call.get("name"), str)):
            raise RecordError("bad_tool_call", "a function_call needs a 'name'.", field, hint)
        args = call.get("arguments", {})
        args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        out.append({"type": "function", "function": {"name": call["name"], "arguments": args}})
    return out


def _tools(data: dict[str, Any], cols: dict[str, str]) -> list[dict[str, Any]] | None:
    """Top-level tool schemas (a list, or a JSON string of one), in OpenAI's {type, function} shape."""
    label = cols.get("tools", "tools")
    value = _get(data, cols, "tools", optional=True)
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RecordError("wrong_type", f"'{label}' is a string but not valid JSON ({e.msg}).", label,
                              "store tools as a JSON list of function schemas.") from None  # fmt: skip
    if value is None or value == []:
        return None
    if not (isinstance(value, list) and all(isinstance(t, dict) for t in value)):
        raise _wrong_type(label, "a list of tool schemas", value)
    # glaive/LLaMA-Factory store bare {name, description, parameters}; chat templates expect OpenAI's shape
    return [t if "function" in t else {"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
            for t in value]  # fmt: skip


def _wrong_type(field: str, expected: str, got: Any) -> RecordError:
    shown = repr(got)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    kind = "null" if got is None else type(got).__name__
    return RecordError("wrong_type", f"'{field}' must be {expected}, got {kind} {shown}.", field,
                       f"store '{field}' as {expected}.")  # fmt: skip
