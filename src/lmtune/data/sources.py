"""Where a run's records come from: one file, several mixed files, or LLaMA-Factory registry entries.

Every task reads files through the same contract, so mixing, registries, validation splits and
rejects work the same for SFT conversations, raw text, labelled texts and preference pairs:

    loader(path, *, format, columns, roles, on_error, system, limit, text_split) -> LoadResult

A task's loader returns `LoadResult.records` of its own record type; each record carries a
`source` ("file.jsonl#12") so a later stage (tokenisation) can still point back at the record.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmtune.data.records import LoadResult, Reject

if TYPE_CHECKING:
    from lmtune.data.load import Opened

# task -> "module:function" of its file loader (imported lazily: each pulls its own dependencies).
LOADERS = {
    "sft": "lmtune.data.load:load_conversations",
    "pretrain": "lmtune.data.text:load_texts",
    "classification": "lmtune.data.classification:load_examples",
    "preference": "lmtune.data.preference:load_preferences",
}
# task -> "module:function" of its opener (the same contract, returning lmtune.data.load.Opened), for
# the tasks whose files are streamed into a store or inspected
OPENERS = {
    "sft": "lmtune.data.load:open_conversations",
    "pretrain": "lmtune.data.text:open_texts",
    "preference": "lmtune.data.preference:open_preferences",
}


@dataclass
class SourceSpec:
    """One file to read, whichever way the config named it (data.path, a datasets entry, a registry entry)."""

    path: str
    label: str  # what the user calls it: the registry name or the file name
    format: str = "auto"
    columns: dict[str, str] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    system: str | None = None
    limit: int | None = None
    weight: float = 1.0


@dataclass
class Sources:
    """The training records of a run, mixed, with what each file contributed."""

    records: list[Any]
    rejects: list[Reject]
    per_dataset: list[dict[str, Any]]  # {name, path, format, read, usable, rejected, used}
    total: int = 0  # records read over all files

    @property
    def formats(self) -> list[str]:
        return list(dict.fromkeys(d["format"] for d in self.per_dataset))


def load_file(spec: SourceSpec, task: str, *, on_error: str, text_split: str = "document") -> LoadResult:
    """Read one file with the task's loader."""
    return _read(LOADERS[task], spec, on_error, text_split)


def open_file(spec: SourceSpec, task: str, *, on_error: str, text_split: str = "document") -> Opened:
    """Open one file with the task's opener: its records and rejects one at a time, as they are read."""
    return _read(OPENERS[task], spec, on_error, text_split)


def _read(where: str, spec: SourceSpec, on_error: str, text_split: str) -> Any:
    module, _, func = where.partition(":")
    reader = getattr(importlib.import_module(module), func)
    return reader(
        spec.path,
        format=spec.format,
        columns=spec.columns or None,
        roles=spec.roles or None,
        on_error=on_error,
        system=spec.system,
        limit=spec.limit,
        text_split=text_split,
    )


def training_specs(data: Any, task: str = "sft") -> list[SourceSpec]:
    """The files of data.path or data.datasets (registry names resolved for `task`), in config order."""
    if data.path is not None:
        return [
            SourceSpec(
                path=data.path,
                label=Path(data.path).name,
                format=data.format,
                columns=dict(data.columns),
                roles=dict(data.roles),
                system=data.system,
                limit=data.limit,
            )
        ]
    specs = []
    for entry in data.datasets:
        if entry.name is not None:
            from lmtune.data.registry import registry_spec

            spec = registry_spec(data.registry, entry, task)
            spec.system = spec.system if spec.system is not None else data.system
            spec.limit = spec.limit if spec.limit is not None else data.limit
            specs.append(spec)
        else:
            specs.append(
                SourceSpec(
                    path=entry.path,
                    label=Path(entry.path).name,
                    format=entry.format,
                    columns=dict(entry.columns),
                    roles=dict(entry.roles),
                    system=entry.system if entry.system is not None else data.system,
                    limit=entry.limit if entry.limit is not None else data.limit,
                    weight=entry.weight,
                )
            )
    return specs


def load_sources(data: Any, task: str, *, console: Any = None) -> Sources:
    """Read every training file and mix them as data.mix says (a single file is used as is)."""
    specs = training_specs(data, task)
    results = [load_file(s, task, on_error=data.on_error, text_split=data.text_split) for s in specs]
    per = [
        {
            "name": s.label,
            "path": s.path,
            "format": r.format,
            "read": r.total,
            "usable": len(r.records),
            "rejected": len(r.rejects),
            "weight": s.weight,
        }
        for s, r in zip(specs, results)
    ]
    if len(results) == 1 and specs[0].weight == 1.0:
        records = results[0].records
        per[0]["used"] = len(records)
    else:
        from lmtune.data.mix import mix_records

        records, used = mix_records(
            [r.records for r in results],
            [s.weight for s in specs],
            how=data.mix,
            stop=data.mix_stop,
            seed=data.seed,
        )
        for row, n in zip(per, used):
            row["used"] = n
    if console is not None:
        for row in per:
            console.print(
                f"Read {row['name']}: {row['format']} format, {row['usable']} of {row['read']} records usable"
                + (f", {row['used']} used in the mix" if len(per) > 1 else "")
            )
    rejects = [rej for r in results for rej in r.rejects]
    return Sources(records, rejects, per, total=sum(r.total for r in results))
