"""`lmtune data inspect` for task: preference: prompt / chosen / rejected tokens and the masks the
DPO-family trainer trains with, in one streaming pass.

Each chunk of records goes through the steps of `lmtune.train.preference` (the same reading and
conversion as `load_preferences`, then `fit_lengths`: prompt shortening and `prompt_too_long`
rejects) and `to_dataset` (the rows TRL receives), then is tokenised as TRL's DPO and KTO trainers
tokenise a conversational row (trl 1.x `_prepare_dataset`): the prompt rendered with the generation
prompt, prompt + answer rendered whole, and the answer starting where the two token lists diverge.
The collator then cuts prompt + answer at `max_length` (keep_start) and trains the answer tokens
only (completion mask 1). ORPO/CPO/SimPO tokenise with their own (older) TRL code; their lengths
can differ by the end-of-text token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune.data.preference import open_preferences
from lmtune.datastore.inspect import InspectResult, LengthSketch
from lmtune.datastore.inspect_tasks import chunks, task_report
from lmtune.datastore.stream import RejectSink, StreamStats, tally

CHUNK = 256
IGNORE = -100


def trl_tokens(
    tokenizer: Any, row: dict[str, Any], answers: tuple[str, ...]
) -> tuple[list[int], list[list[int]], int]:
    """(prompt_ids, [answer_ids, ...], tokens of the prompt rendered alone) of one conversational
    row, as TRL's DPO/KTO trainers split them."""
    import json

    from trl.data_utils import common_prefix_length

    tools = row.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools

    def ids(messages: list[dict[str, Any]], generation: bool = False) -> list[int]:
        out = tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=generation, tokenize=True, return_dict=True
        )
        return list(out["input_ids"])

    prompt = ids(row["prompt"], generation=True)
    fulls = [ids(row["prompt"] + row[a]) for a in answers]
    n = min(common_prefix_length(prompt, f) for f in fulls)
    return prompt[:n], [f[n:] for f in fulls], len(prompt)


def trained_view(prompt_ids: list[int], answer_ids: list[int], max_length: int) -> dict[str, list[int]]:
    """The sequence the collator builds: prompt + answer cut at max_length, mask 1 on the answer."""
    ids = (prompt_ids + answer_ids)[:max_length]
    mask = ([0] * len(prompt_ids) + [1] * len(answer_ids))[:max_length]
    return {"input_ids": ids, "completion_mask": mask}


def inspect_preference(
    path: str | Path,
    tokenizer: Any,
    *,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    max_length: int = 1024,
    max_prompt_length: int | None = None,
    keep: int = 0,
    example: int = 1,
) -> InspectResult:
    """Stream `path` as preference training reads and tokenises it; see the module docstring."""
    from lmtune.train.preference import fit_lengths, to_dataset

    _, fmt, items = open_preferences(path, format=format, columns=columns)
    kto = fmt == "kto"
    answers = ("completion",) if kto else ("chosen", "rejected")

    sink = RejectSink()
    stats = StreamStats(str(path), fmt)
    seq = LengthSketch()  # prompt + answer, per answer (as fit_lengths measures)
    parts = {"prompt": LengthSketch(), **{a: LengthSketch() for a in answers}}
    totals = {"usable": 0, "tokens": 0, "trained_tokens": 0, "truncated": 0, "not_prefix": 0}
    labels = {"desirable": 0, "undesirable": 0}
    kept: list[dict[str, Any]] = []
    pick: tuple[int, str, dict[str, Any]] | None = None

    def flush(chunk: list[Any]) -> None:
        nonlocal pick
        fitted, _, rejects = fit_lengths(
            chunk, tokenizer=tokenizer, max_length=max_length, max_prompt=max_prompt_length
        )
        for r in rejects:
            sink.add(r)
        if not fitted:
            return
        for rec, row in zip(fitted, to_dataset(fitted), strict=True):
            prompt_ids, answer_ids, alone = trl_tokens(tokenizer, row, answers)
            totals["not_prefix"] += len(prompt_ids) < alone
            totals["usable"] += 1
            parts["prompt"].add(len(prompt_ids))
            view: dict[str, Any] = {"source": rec.source, "prompt_ids": prompt_ids}
            for a, ids in zip(answers, answer_ids, strict=True):
                n = len(prompt_ids) + len(ids)
                parts[a].add(len(ids))
                seq.add(n)
                totals["tokens"] += n
                totals["truncated"] += n > max_length
                cut = trained_view(prompt_ids, ids, max_length)
                totals["trained_tokens"] += sum(cut["completion_mask"])
                view[f"{a}_ids"] = ids
                view[a] = cut
            if kto:
                labels["desirable" if rec.label else "undesirable"] += 1
                view["label"] = rec.label
            if len(kept) < keep:
                kept.append(view)
            if pick is None or totals["usable"] <= max(example, 1):
                pick = (totals["usable"], rec.source, view)

    for chunk in chunks(tally(items, sink, stats), CHUNK):
        flush(chunk)
    report = task_report(
        path, "preference", fmt, stats.read, totals["usable"], sink, seq, "sequences",
        kind="kto" if kto else "pairs", tokens=totals["tokens"], trained_tokens=totals["trained_tokens"],
        truncated=totals["truncated"], max_length=max_length,
    )  # fmt: skip
    report.update({f"{p}_length_percentiles": s.percentiles() for p, s in parts.items()})
    if kto:
        report["labels"] = labels
    if totals["not_prefix"]:
        report["note"] = (
            f"for {totals['not_prefix']} records the chat template renders the prompt differently alone than "
            "followed by an answer: the answer starts where the two diverge and the rest of the prompt is "
            "not in the training sequence (TRL does the same and warns once)."
        )
    return InspectResult(report, kept, pick)
