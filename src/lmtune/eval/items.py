"""What `lmtune eval` scores: records of any supported file, turned into prompts with references.

Three kinds of file are accepted, detected from the records:

- check files, jsonl of {"prompt", "reference"?, "contains"?} (the training quickstart's format);
- chat/instruction data in any SFT format lmtune trains on (OpenAI messages, ShareGPT, Alpaca,
  Dolly, prompt/completion): the last assistant message is the reference, the conversation before
  it the prompt, and the whole conversation is what the loss is computed on;
- classification data ({text, label}, csv/tsv with a label column): the text is the prompt and the
  label the reference; a generative model's answer is mapped to one of the file's labels.

Records that cannot be used are rejects (counted and written beside the results), as in training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmtune.data.records import Reject
from lmtune.errors import DataError

Kind = Literal["chat", "classification"]


@dataclass
class EvalItem:
    source: str  # "file.jsonl#12"
    prompt: list[dict]  # the conversation the model answers (ends with a user turn)
    reference: str | None = None
    contains: list[str] = field(default_factory=list)
    label: str | None = None  # classification data: the true label (== reference)
    messages: list[dict] | None = None  # prompt + reference answer: what loss/perplexity score
    tools: list | None = None
    text: str | None = None  # classification data: the raw text (for a classification run)
    text_pair: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "prompt": self.prompt, "reference": self.reference}
        if self.contains:
            out["contains"] = self.contains
        if self.label is not None:
            out["label"] = self.label
        return out


@dataclass
class EvalData:
    path: str
    kind: Kind
    format: str
    items: list[EvalItem]
    total: int
    labels: list[str] | None = None  # the fixed label set (classification data)
    rejects: list[Reject] = field(default_factory=list)


def load_eval_data(
    path: str | Path,
    *,
    system: str | None = None,
    limit: int | None = None,
    labels: list[str] | None = None,
    prompt_template: str = "{text}",
    columns: dict[str, str] | None = None,
) -> EvalData:
    """Read `path` into evaluation items (see the module docstring for the three kinds)."""
    from lmtune.data.readers import iter_raw_records

    file = str(path)
    if not Path(path).is_file():
        raise DataError("file not found.", file=file, hint="check the path given to --data / eval.path.")
    first = next((r.data for r in iter_raw_records(path) if isinstance(r.data, dict)), None)
    if first is not None and "prompt" in first and ({"reference", "contains"} & set(first)):
        data = _load_checks(path, system, limit)
    else:
        data = _load_chat_or_labelled(path, system, limit, prompt_template, columns)
    if labels:
        unknown = sorted({i.label for i in data.items if i.label is not None} - set(labels))
        if unknown:
            raise DataError(
                f"records have labels {unknown[:5]} that are not in the given label set {labels}.",
                file=file,
                hint="add them to --labels, or leave --labels out to use the file's own labels.",
            )
        data.labels = list(labels)
    return data


def _load_checks(path: str | Path, system: str | None, limit: int | None) -> EvalData:
    from lmtune.infer.generate import with_system

    items = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt, reference = str(row["prompt"]), str(row.get("reference") or "")
            contains = [str(c) for c in row.get("contains", [])]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(
                f"invalid check record ({err.__class__.__name__}: {err})",
                file=str(path),
                line=n,
                hint='each line must be {"prompt": "...", "reference": "...", "contains": ["..."]}.',
            ) from None
        conversation = with_system([{"role": "user", "content": prompt}], system)
        messages = conversation + [{"role": "assistant", "content": reference}] if reference else None
        items.append(
            EvalItem(f"{Path(path).name}#{n}", conversation, reference or None, contains, messages=messages)
        )
        if limit is not None and len(items) == limit:
            break
    if not items:
        raise DataError("no checks found", file=str(path), hint="add one JSON object per line.")
    return EvalData(str(path), "chat", "checks", items, total=len(items))


def _load_chat_or_labelled(
    path: str | Path, system: str | None, limit: int | None, template: str, columns: dict[str, str] | None
) -> EvalData:
    from lmtune.data.classification import load_examples
    from lmtune.data.load import load_conversations

    try:
        loaded = load_conversations(path, system=system, limit=limit, columns=columns, open_end=True)
    except DataError as chat_error:
        try:
            examples = load_examples(path, columns=columns, limit=limit)
        except DataError:
            raise chat_error from None
        return _load_labelled(path, examples, system, template)
    items, rejects = [], list(loaded.rejects)
    for conv in loaded.records:
        messages = [m.to_dict() for m in conv.messages]
        if messages[-1]["role"] != "assistant":
            items.append(EvalItem(conv.source, messages, None, tools=conv.tools))
            continue
        ref = messages[-1]
        if ref.get("tool_calls"):
            rejects.append(
                Reject(
                    file=str(path),
                    record=_record_number(conv.source),
                    line=None,
                    field="messages",
                    reason="reference_is_tool_call",
                    message="the last assistant message is a tool call, which text metrics cannot score; "
                    "end the record with a text answer",
                    raw=conv.to_dict(),
                )
            )
            continue
        items.append(
            EvalItem(conv.source, messages[:-1], ref["content"], messages=messages, tools=conv.tools)
        )
    if not items:
        raise DataError("no record can be evaluated.", file=str(path), hint="see the rejects listed above.")
    return EvalData(str(path), "chat", loaded.format, items, total=loaded.total, rejects=rejects)


def _load_labelled(path: str | Path, loaded: Any, system: str | None, template: str) -> EvalData:
    """Items from labelled records (`loaded`: load_examples' result), the prompt from `template`."""
    from lmtune.infer.generate import with_system

    items = []
    for r in loaded.records:
        text = r.text if r.text_pair is None else f"{r.text}\n{r.text_pair}"
        try:
            content = template.format(text=text, text_pair=r.text_pair or "")
        except (KeyError, IndexError, ValueError) as err:
            raise DataError(
                f"the prompt template {template!r} cannot be filled ({err.__class__.__name__}: {err}).",
                hint="use {text} (and {text_pair}) as the only fields, and double any other braces: {{ }}.",
            ) from None
        prompt = with_system([{"role": "user", "content": content}], system)
        items.append(EvalItem(r.source, prompt, r.label, label=r.label, text=r.text, text_pair=r.text_pair))
    labels = sorted({i.label for i in items if i.label is not None}, key=_label_order)
    return EvalData(
        str(path), "classification", "classification", items, loaded.total, labels, list(loaded.rejects)
    )


def _label_order(label: str) -> tuple[int, float | str]:
    """Numeric labels in numeric order (0, 1, 2, 10), others alphabetically after them."""
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


def _record_number(source: str) -> int | None:
    tail = source.rsplit("#", 1)[-1]
    return int(tail) if tail.isdigit() else None
