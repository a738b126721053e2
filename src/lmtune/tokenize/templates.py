"""Chat templates: the model's own, or a named fallback for models that ship none.

Training and inference must render conversations identically, so the chosen template is stored on
the tokenizer (`tokenizer.chat_template`) and saved with it in the run directory; `lmtune chat`
then reads it back from there.

Fallbacks:
- chatml: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message (needs `<|im_end|>` in the vocab).
- alpaca: "### Instruction:" / "### Response:" blocks; each response ends with the tokenizer's EOS.
  Both are token-prefix-stable: a conversation's prefix tokenises to a prefix of its tokens.

Tools, for templates that do not know them (documented fallback, docs/data.md): tool definitions
are appended to the system message as JSON, and an assistant tool call is written into its content
as `<tool_call>{"name": ..., "arguments": ...}</tool_call>`, one per call (the Hermes/Qwen
convention). Templates that know `tool_calls` get them natively, with the arguments as a dict.
"""

from __future__ import annotations

import contextlib
import functools
import json
from typing import Any

from lmtune.errors import ConfigError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

ALPACA = (
    # Separators open a block instead of closing one, so an answer ends exactly at the EOS token
    # and "<eos>\n\n### Instruction" tokenises the same in a prefix as in the whole conversation.
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% else %}{{ 'Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '\\n\\n### Instruction:\\n' + message['content'] }}"
    "{% elif message['role'] == 'tool' %}{{ '\\n\\n### Tool result:\\n' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '\\n\\n### Response:\\n' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n\\n### Response:\\n' }}{% endif %}"
)

FALLBACKS = {"chatml": CHATML, "alpaca": ALPACA}


def apply_template_choice(tokenizer: Any, name: str | None) -> str:
    """Install the chat template the run will use on `tokenizer` and return its name.

    `name` None keeps the model's own template (an error if it has none); a fallback name
    replaces it.
    """
    if name is None:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "This model's tokenizer has no chat template (a base model?). "
                f"Set data.template to one of: {', '.join(FALLBACKS)}."
            )
        return "model"
    if name not in FALLBACKS:
        raise ConfigError(f"Unknown data.template '{name}'. Choose one of: {', '.join(FALLBACKS)}.")
    template = FALLBACKS[name]
    if name == "chatml":
        unk = getattr(tokenizer, "unk_token_id", None)
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if im_end is None or im_end == unk:
            raise ConfigError(
                "data.template chatml needs the <|im_end|> token, which this tokenizer lacks; "
                "use data.template: alpaca (ends answers with the model's own EOS token)."
            )
    if _adds_bos(tokenizer):
        template = "{{ bos_token }}" + template
    tokenizer.chat_template = template
    return name


def _adds_bos(tokenizer: Any) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def supports(tokenizer: Any, feature: str) -> bool:
    """Whether the tokenizer's chat template mentions `feature` (e.g. 'tools', 'tool_calls')."""
    return feature in (getattr(tokenizer, "chat_template", None) or "")


def to_template_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, tokenizer: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Canonical messages -> what `apply_chat_template` gets, with the tools fallback applied."""
    out, tools_out, _ = template_view(messages, tools, tokenizer)
    return out, tools_out


def template_view(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, tokenizer: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, list[int | None]]:
    """`to_template_messages`, plus where each canonical message went: index[j] is the template
    message of messages[j], None for a system message merged into the first user turn (templates
    without a system role, see `has_system_role`)."""
    native_calls = supports(tokenizer, "tool_calls")
    reasoning_key = _reasoning_key(tokenizer)
    out: list[dict[str, Any]] = []
    for m in messages:
        msg: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("reasoning_content"):
            msg[reasoning_key] = m["reasoning_content"]
        if m.get("tool_call_id"):
            msg["tool_call_id"] = m["tool_call_id"]
        if m.get("tool_calls"):
            if native_calls:
                msg["tool_calls"] = [_dict_arguments(c) for c in m["tool_calls"]]
            else:
                calls = "\n".join(_call_text(c) for c in m["tool_calls"])
                msg["content"] = (msg["content"] + "\n" if msg["content"] else "") + calls
        out.append(msg)
    index: list[int | None] = list(range(len(out)))
    if not tools or supports(tokenizer, "tools"):
        tools_out = tools or None
    else:
        listing = "You can call these tools:\n" + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + listing}
        else:
            out.insert(0, {"role": "system", "content": listing})
            index = [j + 1 for j in range(len(messages))]
        tools_out = None
    if (
        len(out) > 1
        and out[0]["role"] == "system"
        and out[1]["role"] == "user"
        and not has_system_role(tokenizer)
    ):
        out[1] = {**out[1], "content": merge_system(out[0]["content"], out[1]["content"])}
        del out[0]
        index = [None if j == 0 else j - 1 for j in index]  # type: ignore[operator]
    return out, tools_out, index


def merge_system(system: str, user: str) -> str:
    """The first user turn of a template without a system role: the system text, a blank line, the
    user text (what Gemma's own documentation recommends)."""
    return f"{system}\n\n{user}" if system else user


REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")


def _reasoning_key(tokenizer: Any) -> str:
    """The message field the template reads reasoning from (`reasoning_content` for Qwen3 and
    DeepSeek, `thinking` for gpt-oss, ...); `reasoning_content` when it names none."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return _reasoning_key_of(template) if isinstance(template, str) else REASONING_KEYS[0]


@functools.lru_cache(maxsize=32)
def _reasoning_key_of(template: str) -> str:
    for key in REASONING_KEYS:
        if f".{key}" in template or f"['{key}']" in template or f'["{key}"]' in template:
            return key
    return REASONING_KEYS[0]


_SYSTEM_PROBE = "lmtune system probe 7"
_system_roles: dict[tuple[str, str], bool] = {}


def check_system_role(tokenizer: Any, records: list[Any], system_merge: str) -> str | None:
    """What to tell the user, once, about the system messages of `records`, or None: merged into the
    first user turn (the template has no system role), or left out by the template in training
    records (Mistral Nemo writes the system prompt only into a final user turn, so a conversation
    ending with an answer renders without it). With system_merge "never" a merge is a ConfigError
    instead, before anything is tokenised."""
    first = next((c for c in records if c.messages[:1] and c.messages[0].role == "system"), None)
    if first is None:
        return None
    if not has_system_role(tokenizer):
        if system_merge == "never":
            raise ConfigError(
                "The chat template has no system role (it rejects or drops system messages) and the data "
                f"has system messages (e.g. {first.source or 'the first record with one'}). Remove them, or "
                "set data.system_merge: auto to put the system text at the start of the first user turn."
            )
        return SYSTEM_MERGE_NOTE
    msgs, tools, _ = template_view([m.to_dict() for m in first.messages], first.tools, tokenizer)
    try:
        text = tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False)
    except Exception:  # noqa: BLE001 - a template error is reported per record by masking
        return None
    if first.messages[0].content.strip() and first.messages[0].content.strip() not in text:
        return SYSTEM_DROPPED_NOTE.format(source=first.source or "the first record with one")
    return None


SYSTEM_MERGE_NOTE = (
    "The chat template has no system role: system messages are merged into the first user turn "
    "(system text, a blank line, the user text); data.system_merge: never makes this an error."
)
SYSTEM_DROPPED_NOTE = (
    "Note: the chat template leaves the system message out of a whole training conversation (e.g. "
    "{source}; Mistral's writes it only into a final user turn), so system prompts are not seen in "
    "training; see docs/data.md."
)


def has_system_role(tokenizer: Any) -> bool:
    """Whether the chat template renders a system message, found by trying: a template that raises
    on one (Gemma: "System role not supported") or drops its text has none. A template that also
    fails without a system message is not judged here (its own error surfaces per record)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return True
    key = (template, str(getattr(tokenizer, "bos_token", None)))
    if key not in _system_roles:
        user = {"role": "user", "content": "Hi"}
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "system", "content": _SYSTEM_PROBE}, user],
                tokenize=False,
                add_generation_prompt=True,
            )
            _system_roles[key] = _SYSTEM_PROBE in text
        except Exception:  # noqa: BLE001 - any template error on a system message means "no system role"
            try:
                tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
                _system_roles[key] = False
            except Exception:  # noqa: BLE001 - the template fails anyway: not a system-role question
                _system_roles[key] = True
    return _system_roles[key]


def _dict_arguments(call: dict[str, Any]) -> dict[str, Any]:
    """The call with JSON-string arguments parsed: chat templates (transformers' convention) expect
    `arguments` as a mapping and render it with `| tojson`; a string would be quoted twice."""
    fn = call.get("function")
    args = fn.get("arguments") if isinstance(fn, dict) else None
    if isinstance(args, str):
        with contextlib.suppress(json.JSONDecodeError):
            parsed = json.loads(args)
            if isinstance(parsed, dict):
                return {**call, "function": {**fn, "arguments": parsed}}
    return call


def _call_text(call: dict[str, Any]) -> str:
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    if isinstance(args, str):
        with contextlib.suppress(json.JSONDecodeError):
            args = json.loads(args)
    body = json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False)
    return f"<tool_call>{body}</tool_call>"
