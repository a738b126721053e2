"""Read preference data: chosen/rejected answer pairs (DPO family) and single labelled answers (KTO).

Every input shape becomes one of two records in OpenAI's message shape, so TRL can render them
with the model's own chat template:

- `PreferencePair(prompt, chosen, rejected)`: `prompt` is the conversation up to the answer
  (system/user/... turns), `chosen`/`rejected` the assistant answer turn(s);
- `KtoExample(prompt, completion, label)`: one answer, labelled desirable (True) or not.

Formats (detected from the keys, or forced with `format:`):

- `preference`: prompt/chosen/rejected as strings or message lists (optional `system`); with only
  chosen/rejected full transcripts (Anthropic HH, torchtune) the prompt is their longest common
  message prefix; question/response_j/response_k (StackExchange-paired) is mapped automatically;
- `sharegpt_ranking`: LLaMA-Factory's `conversations` of {from, value} turns + `chosen`/`rejected`
  {from, value} objects;
- `openai_preference`: OpenAI's {"input": {"messages"}, "preferred_output", "non_preferred_output"};
- `kto`: `messages` whose last assistant turn is the completion, or prompt/completion, plus a
  boolean `label` (also "true"/"false", 0/1).

A record that does not fit is kept as a `Reject` naming the field and the reason (identical
answers, empty answer, no common prompt, bad label, wrong type, ...), never dropped silently.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.data.formats import _MISSING, SHAREGPT_ROLES, _content, _resolve, _tools
from lmtune.data.load import Opened, check_columns, convert_raws, read_head, whole_file
from lmtune.data.records import ROLES
from lmtune.data.validate import RecordError
from lmtune.errors import DataError

PREFERENCE_FORMATS = ("preference", "sharegpt_ranking", "openai_preference", "kto")
PAIR_FORMATS = ("preference", "sharegpt_ranking", "openai_preference")

# Canonical field names each format understands (the keys `columns` may map).
FIELDS: dict[str, tuple[str, ...]] = {
    "preference": ("prompt", "chosen", "rejected", "system", "tools", "role", "content"),
    "sharegpt_ranking": (
        "conversations",
        "messages",
        "chosen",
        "rejected",
        "system",
        "tools",
        "from",
        "value",
    ),
    "openai_preference": ("messages", "preferred_output", "non_preferred_output", "tools", "role", "content"),
    "kto": ("messages", "prompt", "completion", "label", "system", "tools", "role", "content"),
}
# Where openai_preference keeps its prompt unless `columns` says otherwise.
_DEFAULT_PATHS = {"openai_preference": {"messages": "input.messages", "tools": "input.tools"}}
_STACK_EXCHANGE = {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


@dataclass
class PreferencePair:
    prompt: list[dict[str, Any]]  # the conversation up to the answer
    chosen: list[dict[str, Any]]  # the preferred assistant turn(s)
    rejected: list[dict[str, Any]]  # the dispreferred assistant turn(s)
    tools: list[dict[str, Any]] | None = None
    source: str = ""  # "file.jsonl#12" (record number, 1-based)


@dataclass
class KtoExample:
    prompt: list[dict[str, Any]]
    completion: list[dict[str, Any]]  # the assistant turn(s) judged
    label: bool  # True: desirable, False: undesirable
    tools: list[dict[str, Any]] | None = None
    source: str = ""


def open_preferences(
    path: str | Path,
    *,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    roles: dict[str, str] | None = None,
    on_error: str = "skip",
    system: str | None = None,
    limit: int | None = None,
    text_split: str = "document",  # noqa: ARG001 - the shared loader contract (lmtune.data.sources)
) -> Opened:
    """Open `path` as `PreferencePair`s or `KtoExample`s (one kind per file); see the module doc.

    `roles` maps canonical roles to the speaker names a ShareGPT-style file uses ({user: human}).
    Only the first readable records (detection) are held, so `lmtune data inspect` streams a file.
    """
    from lmtune.data.load import _check_options

    file = str(path)
    if format not in ("auto", *PREFERENCE_FORMATS):
        close = difflib.get_close_matches(format, PREFERENCE_FORMATS, n=1)
        did = f" Did you mean '{close[0]}'?" if close else ""
        raise DataError(
            f"format '{format}' is not a preference format.{did}",
            file=file,
            hint=f"for task: preference use auto or one of {', '.join(PREFERENCE_FORMATS)}.",
        )
    _check_options("auto", on_error, limit)
    samples, raws = read_head(path, limit, detect=format == "auto")
    cols = dict(columns or {})
    fmt = format
    if fmt == "auto":
        fmt = detect_preference_format(samples, file=file, columns=cols)
        if (
            fmt == "preference"
            and not cols
            and all(set(_STACK_EXCHANGE.values()) <= s.keys() for s in samples)
        ):
            cols = dict(_STACK_EXCHANGE)
    check_columns(fmt, cols, file=file, fields=FIELDS)
    speaker = _speaker_map(roles, file)

    def convert(data: Any) -> PreferencePair | KtoExample:
        return convert_record(data, fmt, cols, speaker, system)

    return Opened(file, fmt, convert_raws(raws, convert, file=file, on_error=on_error))


# every record and reject of open_preferences, in a LoadResult (task: preference's loader)
load_preferences = whole_file(open_preferences)


# ---------------------------------------------------------------- detection


def detect_preference_format(samples: list[dict[str, Any]], *, file: str, columns: dict[str, str]) -> str:
    """The preference format of the first records, from their keys; a clear error when they are not
    preference data (SFT conversations, raw text, labelled texts) or mix pairs with KTO records."""
    votes: dict[str, list[int]] = {}
    for i, rec in enumerate(samples, start=1):
        fmt = _candidate(_view(rec, columns))
        if fmt is not None:
            votes.setdefault(fmt, []).append(i)
    kinds = {"kto" if f == "kto" else "pair" for f in votes}
    if len(kinds) > 1:
        raise DataError(
            f"the file mixes KTO records (a single answer with a true/false label: records "
            f"{', '.join(map(str, votes['kto'][:5]))}) with chosen/rejected pairs.",
            file=file,
            hint="keep pairs and KTO records in separate files (and runs: KTO uses preference.loss: kto).",
        )
    if len(votes) > 1:
        seen = "; ".join(f"{f} (records {', '.join(map(str, idx[:5]))})" for f, idx in votes.items())
        raise DataError(
            f"records look like different preference formats: {seen}.",
            file=file,
            hint="keep one format per file, or set `format:` to the one you mean.",
        )
    if votes:
        return next(iter(votes))
    keys = list(dict.fromkeys(k for s in samples for k in s))[:30]
    if {"messages", "conversations", "instruction", "completion"} & set(keys):
        raise DataError(
            f"this file holds plain conversations or instructions (keys {keys}) with no chosen/rejected "
            "answers and no good/bad label, which is SFT data, not preference data.",
            file=file,
            hint="set `task: sft` to train on it, or give task: preference a file of prompt/chosen/rejected "
            "pairs (or KTO records with a true/false `label`).",
        )
    if "text" in keys:
        kind = "labelled texts (task: classification)" if "label" in keys else "raw text (task: pretrain)"
        raise DataError(
            f"this file holds {kind} (keys {keys}), not preference data.",
            file=file,
            hint="set the task named above for it, or give task: preference chosen/rejected pairs.",
        )
    raise DataError(
        f"cannot tell the preference format: the records have keys {keys}. Known: preference (prompt?, "
        "chosen, rejected), sharegpt_ranking (conversations, chosen, rejected), openai_preference (input, "
        "preferred_output, non_preferred_output), kto (messages or prompt/completion, label).",
        file=file,
        hint="set `format:` to force one, or map your field names with `columns:`, "
        "e.g. columns: {prompt: question, chosen: good_answer, rejected: bad_answer}.",
    )


def _view(rec: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """The record as detection should see it: mapped top-level fields under their canonical names."""
    view = dict(rec)
    for canonical, path in columns.items():
        if canonical in ("role", "content", "from", "value"):
            continue
        value = _resolve(rec, path)
        if value is not _MISSING:
            view[canonical] = value
    return view


def _candidate(rec: dict[str, Any]) -> str | None:
    keys = rec.keys()
    if {"preferred_output", "non_preferred_output"} <= keys:
        return "openai_preference"
    if {"chosen", "rejected"} <= keys:
        if isinstance(rec.get("conversations"), list) or _sharegpt_turns(rec.get("messages")):
            return "sharegpt_ranking"
        return "preference"
    if set(_STACK_EXCHANGE.values()) <= keys:
        return "preference"
    if "label" in keys and ("messages" in keys or "completion" in keys):
        return "kto"
    return None


def _sharegpt_turns(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "from" in value[0]


def _speaker_map(roles: dict[str, str] | None, file: str) -> dict[str, str]:
    """Speaker name (lower case) -> canonical role: ShareGPT's names, then the user's `roles` mapping."""
    speaker = dict(SHAREGPT_ROLES)
    for canonical, name in (roles or {}).items():
        if canonical not in ROLES:
            raise DataError(
                f"`roles:` maps '{canonical}', which is not a role.",
                file=file,
                hint=f"the keys of `roles:` are {', '.join(ROLES)}; the values the speaker names in your file.",
            )
        speaker[str(name).lower()] = canonical
    return speaker


# ---------------------------------------------------------------- conversion


def convert_record(
    data: dict[str, Any], fmt: str, cols: dict[str, str], speaker: dict[str, str], system: str | None
) -> PreferencePair | KtoExample:
    """One raw record -> a PreferencePair or KtoExample; RecordError naming the field when it does not fit."""
    paths = {**_DEFAULT_PATHS.get(fmt, {}), **cols}
    get = _Getter(data, paths, speaker)
    tools = _tools(data, {"tools": paths.get("tools", "tools")})
    if fmt == "kto":
        rec: PreferencePair | KtoExample = _kto(get, tools)
    elif fmt == "openai_preference":
        prompt = get.messages("messages")
        rec = PreferencePair(
            prompt, get.answer("preferred_output"), get.answer("non_preferred_output"), tools
        )
    elif fmt == "sharegpt_ranking":
        # LLaMA-Factory's registry calls the turns "messages"; its files usually "conversations".
        in_file = "messages" if "messages" in data and "conversations" not in data else "conversations"
        name = next((k for k in ("conversations", "messages") if k in cols), in_file)
        prompt = get.system() + get.messages(name)
        rec = PreferencePair(prompt, get.answer("chosen"), get.answer("rejected"), tools)
    else:
        rec = _pair(get, tools)
    _check_record(rec)
    if system is not None and rec.prompt[0]["role"] != "system":
        rec.prompt.insert(0, {"role": "system", "content": system})
    return rec


def _pair(get: _Getter, tools: list[dict[str, Any]] | None) -> PreferencePair:
    """preference: explicit prompt, or (HH style) the common prefix of two full transcripts."""
    chosen, rejected = get.messages("chosen", answer=True), get.messages("rejected", answer=True)
    if get.has("prompt"):
        prompt = get.system() + get.messages("prompt", user=True)
        bare = [m for m in prompt if m["role"] != "system"]
        for name, answer in (("chosen", chosen), ("rejected", rejected)):
            # Some datasets repeat the prompt inside each answer (UltraFeedback-binarized): drop it.
            for head in (prompt, bare):
                if head and answer[: len(head)] == head and len(answer) > len(head):
                    answer[: len(head)] = []
                    break
            else:
                if answer[0]["role"] != "assistant":
                    raise RecordError(
                        "answer_not_assistant",
                        f"'{get.label(name)}' starts with a {answer[0]['role']} turn, not the assistant's answer.",
                        get.label(name),
                        "give the answer alone, or the full conversation starting with the prompt.",
                    )
        return PreferencePair(prompt, chosen, rejected, tools)
    if chosen == rejected:
        raise _identical(get)
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise RecordError("no_common_prefix", "chosen and rejected share no first message, and there is no "
                          "'prompt', so the prompt cannot be found.", get.label("prompt"),
                          "add a 'prompt' field, or give both transcripts the same opening turns.")  # fmt: skip
    if n == len(chosen) or n == len(rejected):
        raise RecordError("nothing_after_prefix", "one transcript is the other's beginning, so nothing is "
                          "left of it as an answer after the shared prompt.", get.label("chosen"),
                          "end both transcripts with their own assistant answer.")  # fmt: skip
    if chosen[n]["role"] != "assistant" or rejected[n]["role"] != "assistant":
        raise RecordError("no_common_prefix", f"chosen and rejected part ways at message {n}, which is not "
                          "an assistant answer, so no shared prompt ends where the answers start.",
                          f"{get.label('chosen')}[{n}]", "make both transcripts identical up to the answer.")  # fmt: skip
    head = get.system() if chosen[0]["role"] != "system" else []
    return PreferencePair(head + chosen[:n], chosen[n:], rejected[n:], tools)


def _kto(get: _Getter, tools: list[dict[str, Any]] | None) -> KtoExample:
    label = _label(get.value("label"), get.label("label"))
    if not get.has("prompt"):  # a conversation whose last turn is the judged answer
        msgs = get.system() + get.messages("messages")
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            raise RecordError("no_answer", "the conversation has no assistant turn to judge.",
                              get.label("messages"), "end it with the assistant answer the label is about.")  # fmt: skip
        if last != len(msgs) - 1:
            raise RecordError("no_answer", f"the conversation ends with a {msgs[-1]['role']} turn, not the "
                              "assistant answer the label is about.", f"{get.label('messages')}[{len(msgs) - 1}]",
                              "end the conversation with the judged assistant answer.")  # fmt: skip
        return KtoExample(msgs[:last], msgs[last:], label, tools)
    prompt = get.system() + get.messages("prompt", user=True)
    return KtoExample(prompt, get.messages("completion", answer=True), label, tools)


def _label(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise RecordError("bad_label", f"'{field}' must be true or false, got {shown}.", field,
                      "use true (a desirable answer) or false (an undesirable one); 1/0 and \"true\"/\"false\" also work.")  # fmt: skip


def _identical(get: _Getter) -> RecordError:
    return RecordError("identical_answers", "chosen and rejected are the same, so there is no preference "
                       "to learn.", get.label("rejected"), "give a different rejected answer, or drop this record.")  # fmt: skip


def _check_record(rec: PreferencePair | KtoExample) -> None:
    """Rules every record must meet, whatever its format."""
    if not rec.prompt or all(m["role"] == "system" for m in rec.prompt):
        raise RecordError("empty_prompt", "there is no prompt (no user turn before the answer).", "prompt",
                          "give each record the question the answers reply to.")  # fmt: skip
    if rec.prompt[-1]["role"] == "assistant":
        raise RecordError("prompt_ends_with_answer", "the prompt ends with an assistant turn, so the answers "
                          "would not reply to anything.", "prompt", "end the prompt with the user's turn.")  # fmt: skip
    for m in rec.prompt:
        if m["role"] == "user" and not m["content"].strip():
            raise RecordError("empty_prompt", "a user turn of the prompt is empty.", "prompt",
                              "write the user's question, or drop this record.")  # fmt: skip
    answers = (("chosen", rec.chosen), ("rejected", rec.rejected)) if isinstance(rec, PreferencePair) else (
        ("completion", rec.completion),)  # fmt: skip
    for name, answer in answers:
        if not answer:
            raise RecordError("empty_answer", f"'{name}' has no answer turn.", name, "give the answer text.")
        if answer[-1]["role"] != "assistant":
            raise RecordError("answer_not_assistant", f"'{name}' ends with a {answer[-1]['role']} turn, not "
                              "the assistant's answer.", name, "end each answer with an assistant turn.")  # fmt: skip
        if not any(m["content"].strip() or m.get("tool_calls") for m in answer if m["role"] == "assistant"):
            raise RecordError(
                "empty_answer", f"'{name}' is empty.", name, "write the answer, or drop this record."
            )
    if isinstance(rec, PreferencePair) and rec.chosen == rec.rejected:
        raise RecordError("identical_answers", "chosen and rejected are the same, so there is no preference "
                          "to learn.", "rejected", "give a different rejected answer, or drop this record.")  # fmt: skip


class _Getter:
    """Field access for one record: `columns` renames, dotted paths, and messages in either shape
    ({role, content} or ShareGPT's {from, value}), with the field's name in every error."""

    def __init__(self, data: dict[str, Any], paths: dict[str, str], speaker: dict[str, str]):
        self.data, self.paths, self.speaker = data, paths, speaker

    def label(self, name: str) -> str:
        return self.paths.get(name, name)

    def has(self, name: str) -> bool:
        return _resolve(self.data, self.label(name)) is not _MISSING

    def value(self, name: str) -> Any:
        value = _resolve(self.data, self.label(name))
        if value is _MISSING:
            path = self.label(name)
            mapped = f" (mapped from '{name}')" if path != name else ""
            raise RecordError("missing_field", f"the record has no '{path}'{mapped}; its keys are "
                              f"{list(self.data)[:15]}.", path, f"add '{path}' to every record, or map another "
                              f"field to '{name}' with `columns:`.")  # fmt: skip
        return value

    def system(self) -> list[dict[str, Any]]:
        if not self.has("system"):
            return []
        value = self.value("system")
        if value is None or value == "":
            return []
        if not isinstance(value, str):
            raise _wrong_type(self.label("system"), "a string", value)
        return [{"role": "system", "content": value}]

    def messages(self, name: str, *, user: bool = False, answer: bool = False) -> list[dict[str, Any]]:
        """A string (a user turn when `user`, an assistant turn when `answer`), one message object,
        or a list of messages."""
        label, value = self.label(name), self.value(name)
        if isinstance(value, str) and (user or answer):
            return [{"role": "user" if user else "assistant", "content": value}]
        if isinstance(value, dict) and answer:
            return [self._message(value, label)]
        if not isinstance(value, list):
            expected = "a list of messages" + (" or a string" if user or answer else "")
            raise _wrong_type(label, expected, value)
        if not value:
            reason = "empty_answer" if answer else "empty_prompt"
            raise RecordError(reason, f"'{label}' is an empty list.", label, "give at least one message.")
        return [self._message(m, f"{label}[{i}]") for i, m in enumerate(value)]

    def answer(self, name: str) -> list[dict[str, Any]]:
        return self.messages(name, answer=True)

    def _message(self, m: Any, field: str) -> dict[str, Any]:
        if not isinstance(m, dict):
            raise _wrong_type(field, "a message object ({role, content} or {from, value})", m)
        k_role = self.paths.get("role") or self.paths.get("from") or ("role" if "role" in m else "from")
        k_text = (
            self.paths.get("content") or self.paths.get("value") or ("content" if "content" in m else "value")
        )
        if k_role not in m:
            raise RecordError("missing_field", f"the message has no '{k_role}'.", f"{field}.{k_role}",
                              "give every message a role (user, assistant, ...) or a ShareGPT 'from'.")  # fmt: skip
        who = m[k_role]
        if not isinstance(who, str):
            raise _wrong_type(f"{field}.{k_role}", "a string", who)
        role = who if who in ROLES else self.speaker.get(who.lower())
        if role not in ROLES:
            raise RecordError("unknown_role", f"speaker {who!r} is not a known role.", f"{field}.{k_role}",
                              f"use one of {', '.join(ROLES)} (or ShareGPT names), or map yours with `roles:`.")  # fmt: skip
        calls = m.get("tool_calls") if role == "assistant" else None
        if k_text not in m and not calls:
            raise RecordError("missing_field", f"the message has no '{k_text}'.", f"{field}.{k_text}",
                              "add the message text.")  # fmt: skip
        out: dict[str, Any] = {"role": role, "content": _content(m.get(k_text), f"{field}.{k_text}",
                                                                   allow_null=bool(calls))}  # fmt: skip
        if calls:
            out["tool_calls"] = calls
        return out


def _wrong_type(field: str, expected: str, got: Any) -> RecordError:
    shown = repr(got)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    kind = "null" if got is None else type(got).__name__
    return RecordError("wrong_type", f"'{field}' must be {expected}, got {kind} {shown}.", field,
                       f"store '{field}' as {expected}.")  # fmt: skip


def pairs_to_kto(pairs: list[PreferencePair]) -> list[KtoExample]:
    """Each pair as two KTO examples (chosen desirable, rejected undesirable), as TRL unpairs them."""
    out = []
    for p in pairs:
        out.append(KtoExample([dict(m) for m in p.prompt], p.chosen, True, p.tools, p.source))
        out.append(KtoExample([dict(m) for m in p.prompt], p.rejected, False, p.tools, p.source))
    return out
