"""Generation checks: ask held-out prompts before and after training and score the answers.

A check file is jsonl of {"prompt": str, "reference": str, "contains": [str, ...]?}. Two scores:
- exact_match: the answer equals the reference after normalisation (case, spaces, end punctuation);
- contains: every `contains` string appears in the answer (case-insensitive), e.g. the new name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.errors import DataError


@dataclass
class Check:
    prompt: str
    reference: str
    contains: list[str] = field(default_factory=list)


def load_checks(path: str | Path) -> list[Check]:
    checks = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            checks.append(
                Check(str(row["prompt"]), str(row.get("reference", "")), list(row.get("contains", [])))
            )
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(
                f"invalid check record ({err.__class__.__name__}: {err})",
                file=str(path),
                line=n,
                hint='each line must be {"prompt": "...", "reference": "...", "contains": ["..."]}.',
            ) from None
    if not checks:
        raise DataError("no checks found", file=str(path), hint="add one JSON object per line.")
    return checks


def normalize(text: str) -> str:
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.rstrip(" .!?")


def score(answer: str, check: Check) -> dict[str, bool]:
    low = answer.lower()
    return {
        "exact_match": normalize(answer) == normalize(check.reference),
        "contains": all(c.lower() in low for c in check.contains) if check.contains else None,
    }


def run_checks(
    model: Any, tokenizer: Any, checks: list[Check], *, max_new_tokens: int, system: str | None = None
):
    """Greedy answers to every prompt (with the run's chat template), scored."""
    from lmtune.infer.generate import GenerationOptions, generate_replies, with_system

    convs = [with_system([{"role": "user", "content": c.prompt}], system) for c in checks]
    answers = generate_replies(model, tokenizer, convs, GenerationOptions(max_new_tokens=max_new_tokens))
    rows = [{"prompt": c.prompt, "answer": a, **score(a, c)} for c, a in zip(checks, answers)]
    return {"rows": rows, **aggregate(rows)}


def aggregate(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in ("exact_match", "contains"):
        vals = [r[key] for r in rows if r[key] is not None]
        out[key] = sum(vals) / len(vals) if vals else None
    return out
