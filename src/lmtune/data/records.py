"""Canonical records: the one shape every input format is converted to.

A conversation is a list of messages in OpenAI's chat shape (system/user/assistant/tool), so the
model's own chat template can render it unchanged. `weight` follows OpenAI's fine-tuning format:
0 means "do not train on this assistant message", 1 means "train", None means "use the run's
`train_on` policy". `source` says where the record came from (file and record number) so any later
error can point back at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    role: str
    content: str
    weight: float | None = None
    tool_calls: list[dict[str, Any]] | None = None
    name: str | None = None
    # The answer's reasoning (chain of thought), kept apart from `content` as the OpenAI-compatible
    # APIs and chat templates (Qwen3, DeepSeek-R1) name it; also read from `reasoning` / `thinking`.
    reasoning_content: str | None = None
    tool_call_id: str | None = None  # a tool message: which call it answers (Mistral's template needs it)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.weight is not None:
            out["weight"] = self.weight
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.name:
            out["name"] = self.name
        if self.reasoning_content:
            out["reasoning_content"] = self.reasoning_content
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass
class Conversation:
    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    source: str = ""  # "file.jsonl#12" (record number, 1-based)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": [m.to_dict() for m in self.messages]}
        if self.tools:
            out["tools"] = self.tools
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> Conversation:
        msgs = [
            Message(
                role=m["role"],
                content=m.get("content") or "",
                weight=m.get("weight"),
                tool_calls=m.get("tool_calls"),
                name=m.get("name"),
                reasoning_content=m.get("reasoning_content"),
                tool_call_id=m.get("tool_call_id"),
            )
            for m in data["messages"]
        ]
        return cls(messages=msgs, tools=data.get("tools"), source=source)


@dataclass
class Reject:
    """A record that was skipped, with everything needed to find and fix it."""

    file: str
    record: int | None  # 1-based record number in the file
    line: int | None  # 1-based line number where the format has lines
    field: str | None
    reason: str  # short, stable code used for grouping: "invalid_json", "missing_field", ...
    message: str  # one human sentence, with a fix hint
    raw: Any = None  # the record (or raw line) as read, so nothing is lost

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "record": self.record,
            "line": self.line,
            "field": self.field,
            "reason": self.reason,
            "message": self.message,
            "raw": self.raw,
        }


@dataclass
class LoadResult:
    """What reading one data file produced."""

    path: str
    format: str
    records: list[Conversation] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    total: int = 0  # records seen in the file (accepted + rejected)

    def reject_counts(self) -> dict[str, int]:
        return count_reasons(self.rejects)


def count_reasons(rejects: list[Reject]) -> dict[str, int]:
    """Rejects per reason, most frequent first."""
    counts: dict[str, int] = {}
    for r in rejects:
        counts[r.reason] = counts.get(r.reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
