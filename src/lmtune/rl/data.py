"""Prompt files for task: grpo / rloo: one prompt per record, plus the columns rewards read.

A record is either OpenAI chat ({"messages": [...]}: the conversation up to its last user turn is
the prompt; a trailing assistant turn is kept as column `answer` unless the record has one) or
{"prompt": "text" or [messages]}. Every other field is a column passed to the reward functions
(e.g. `answer`, the reference). `data.columns` maps the field names: {prompt: question}.

Bad records are rejected (counted, written to rejects.jsonl) like every other task's.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.data.readers import iter_raw_records
from lmtune.data.records import Reject
from lmtune.errors import DataError


@dataclass
class PromptRecord:
    prompt: list[dict[str, str]]  # chat messages ending with a user turn
    columns: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # file#record


def read_prompts(
    path: str, *, columns: dict[str, str], system: str | None, on_error: str, limit: int | None = None
):
    """(records, rejects, total) of one prompt file."""
    records: list[PromptRecord] = []
    rejects: list[Reject] = []
    total = 0
    prompt_key = columns.get("prompt", "prompt")
    messages_key = columns.get("messages", "messages")
    for raw in iter_raw_records(path):
        if limit is not None and total >= limit:
            break
        total += 1
        if raw.error is not None:
            rejects.append(raw.error)
            continue
        data = dict(raw.data or {})
        problem = None
        answer = None
        if isinstance(data.get(messages_key), list):
            msgs = [m for m in data.pop(messages_key) if isinstance(m, dict)]
            while msgs and msgs[-1].get("role") == "assistant":
                answer = msgs.pop().get("content")
            prompt = msgs
        elif prompt_key in data:
            value = data.pop(prompt_key)
            prompt = [{"role": "user", "content": value}] if isinstance(value, str) else value
        else:
            prompt, problem = None, (prompt_key, f"has neither '{prompt_key}' nor '{messages_key}'")
        if problem is None and (
            not isinstance(prompt, list)
            or not prompt
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt)
            or prompt[-1].get("role") != "user"
        ):
            problem = (prompt_key, "the prompt must be text or chat messages ending with a user turn")
        if problem is not None:
            reject = Reject(
                file=str(path),
                record=raw.index,
                line=raw.line,
                field=problem[0],
                reason="missing_field" if "neither" in problem[1] else "bad_prompt",
                message=f"the record {problem[1]}. Fix: give each record a prompt (text), or messages ending "
                "with a user turn; map other names with data.columns: {prompt: your_field}.",
                raw=raw.data,
            )
            if on_error == "fail":
                raise DataError(
                    reject.message,
                    file=reject.file,
                    record=reject.record,
                    line=reject.line,
                    field=reject.field,
                )
            rejects.append(reject)
            continue
        assert prompt is not None
        if system and prompt[0].get("role") != "system":
            prompt = [{"role": "system", "content": system}, *prompt]
        renamed = {
            k: data.pop(v) for k, v in columns.items() if k not in ("prompt", "messages") and v in data
        }
        data.update(renamed)
        if answer is not None:
            data.setdefault("answer", answer)
        records.append(PromptRecord(prompt=prompt, columns=data, source=f"{Path(path).name}#{raw.index}"))
    return records, rejects, total


def split(
    records: list[PromptRecord], val_size: float, seed: int
) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """A seeded validation split (a fraction < 1 or a count)."""
    if not val_size:
        return records, []
    n_val = int(val_size) if val_size >= 1 else max(1, round(val_size * len(records)))
    if n_val >= len(records):
        raise DataError(
            f"data.val_size {val_size} takes all {len(records)} prompts.", hint="lower data.val_size."
        )
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    return [r for i, r in enumerate(records) if i not in val_idx], [
        r for i, r in enumerate(records) if i in val_idx
    ]


def to_dataset(records: list[PromptRecord], record_column: str) -> Any:
    """A `datasets.Dataset` in TRL's conversational prompt format, columns alongside."""
    from datasets import Dataset

    keys = sorted({k for r in records for k in r.columns})
    rows = [
        {"prompt": r.prompt, **{k: r.columns.get(k) for k in keys}, record_column: r.source} for r in records
    ]
    return Dataset.from_list(rows)
