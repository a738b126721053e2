"""Read LLaMA-Factory dataset registries (dataset_info.json) so their entries can be trained on.

LLaMA-Factory describes each dataset by name: where its file is (`file_name`, relative to the
registry's folder), its `formatting` (alpaca, sharegpt, openai), whether it is preference data
(`ranking`, or a `kto_tag` column), its `columns` and, for conversation files, its `tags` (the
keys and speaker names of the turns). `registry_spec` turns one entry into the `SourceSpec` the
task loaders read (lmtune.data.sources), in lmtune's own format and field names, so a user can
point `data.registry` at an existing LLaMA-Factory data folder and name its entries.

lmtune never downloads: entries that live on a hub (hf_hub_url, ms_hub_url, om_hub_url,
script_url, cloud_file_name) are refused with the fix (download the file, add `file_name`).
Multimodal columns (images, videos, audios) are refused too: lmtune trains text models.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.data.formats import SHAREGPT_ROLES
from lmtune.data.sources import SourceSpec
from lmtune.errors import ConfigError, DataError

HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
PART_KEYS = ("subset", "split", "folder")
FORMATTINGS = ("alpaca", "sharegpt", "openai")
COLUMNS = (
    "prompt",
    "query",
    "response",
    "history",
    "messages",
    "system",
    "tools",
    "chosen",
    "rejected",
    "kto_tag",
)
MEDIA_COLUMNS = ("images", "videos", "audios")
TAGS = (
    "role_tag",
    "content_tag",
    "user_tag",
    "assistant_tag",
    "observation_tag",
    "function_tag",
    "system_tag",
)
# tag -> the role lmtune's `roles:` option names
TAG_ROLES = {
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function_call",
    "system_tag": "system",
}
# alpaca column (LLaMA-Factory name) -> lmtune alpaca field
ALPACA_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "history": "history",
    "system": "system",
    "tools": "tools",
}


@dataclass
class Mapped:
    """An entry in lmtune's terms: format, columns (lmtune field -> file field), roles, kind."""

    format: str
    kind: str  # sft, preference, kto, text: which task the entry's data is for
    columns: dict[str, str] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    limit: int | None = None


def read_registry(path: str | Path) -> dict[str, Any]:
    """The registry's entries by name; a missing or malformed file is a DataError naming it."""
    p = Path(path)
    if not p.is_file():
        raise DataError(
            "the registry file does not exist." if not p.exists() else "the registry is not a file.",
            file=str(p),
            hint="point data.registry at a LLaMA-Factory dataset_info.json.",
        )
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(
            f"the registry is not valid JSON ({e.msg}).",
            file=str(p),
            line=e.lineno,
            hint="fix the JSON syntax.",
        ) from None
    if not isinstance(data, dict):
        raise DataError(
            f"the registry must be a JSON object of entries by name, got {type(data).__name__}.",
            file=str(p),
            hint='write it as {"my_data": {"file_name": "my_data.json"}}.',
        )
    return data


def registry_spec(registry_path: str | Path | None, entry: Any, task: str = "sft") -> SourceSpec:
    """The file spec of registry entry `entry` (a data.datasets entry with `name`, or a name).

    The entry's own format, columns, roles, system, limit and weight in the config win over the
    registry's (columns and roles are merged key by key).
    """
    if registry_path is None:
        raise ConfigError("data.datasets names a registry entry but data.registry is not set.")
    name = entry if isinstance(entry, str) else entry.name
    reg_file = str(registry_path)
    registry = read_registry(registry_path)
    if name not in registry:
        close = difflib.get_close_matches(name, list(registry), n=3)
        did = f" Close matches: {', '.join(close)}." if close else ""
        raise DataError(
            f"the registry has no entry '{name}'.{did}",
            file=reg_file,
            hint=f"use one of the names in the registry ({len(registry)} entries), e.g. {', '.join(list(registry)[:5])}.",
        )
    info = registry[name]
    if not isinstance(info, dict):
        raise DataError(f"entry '{name}' must be a JSON object, got {type(info).__name__}.", file=reg_file)
    check_local(name, info, reg_file)  # hub entries first: nothing else matters until there is a file
    mapped = map_entry(name, info, task, reg_file)
    path = entry_file(name, info, reg_file)
    spec = SourceSpec(path=str(path), label=name, format=mapped.format, columns=mapped.columns,
                      roles=mapped.roles, limit=mapped.limit)  # fmt: skip
    if isinstance(entry, str):
        return spec
    if entry.format != "auto":
        spec.format = entry.format
    spec.columns = {**spec.columns, **entry.columns}
    spec.roles = {**spec.roles, **entry.roles}
    spec.system = entry.system
    spec.limit = entry.limit if entry.limit is not None else spec.limit
    spec.weight = entry.weight
    return spec


def check_local(name: str, info: dict[str, Any], reg_file: str) -> None:
    """Refuse entries that live on a hub (no file_name): lmtune reads local files only."""
    if info.get("file_name") is None:
        entry_file(name, info, reg_file)


def entry_file(name: str, info: dict[str, Any], reg_file: str) -> Path:
    """The entry's local file, resolved against the registry's folder."""
    hubs = {k: info[k] for k in HUB_KEYS if k in info}
    parts = {k: info[k] for k in PART_KEYS if k in info}
    part_note = (
        f" It also selects {', '.join(f'{k} {v!r}' for k, v in parts.items())}: download that part."
        if parts
        else ""
    )
    file_name = info.get("file_name")
    if file_name is None:
        if hubs:
            where = ", ".join(f"{k}: {v}" for k, v in hubs.items())
            raise DataError(
                f"entry '{name}' points to a hub ({where}) and lmtune does not download datasets.{part_note}",
                file=reg_file,
                hint=f"download the data as a json/jsonl/csv/parquet file next to the registry and add "
                f'"file_name": "<that file>" to the entry \'{name}\' (or use data.datasets with path).',
            )
        raise DataError(
            f"entry '{name}' has no file_name (and no hub url).",
            file=reg_file,
            hint=f'add "file_name": "<data file>" to the entry \'{name}\'.',
        )
    if not isinstance(file_name, str) or not file_name:
        raise DataError(f"entry '{name}': file_name must be a file name, got {file_name!r}.", file=reg_file)
    path = Path(file_name)
    if not path.is_absolute():
        path = Path(os.path.abspath(reg_file)).parent / path  # keep symlinked folders as the user named them
    if path.is_dir():
        raise DataError(
            f"entry '{name}': file_name points to a folder ({path}); lmtune reads one file per entry.",
            file=reg_file,
            hint="add one registry entry (or one data.datasets path) per file in the folder.",
        )
    if not path.exists():
        hub = f" (the entry also names {', '.join(hubs)}, but lmtune does not download)" if hubs else ""
        raise DataError(
            f"entry '{name}': its file {path} does not exist{hub}.",
            file=reg_file,
            hint=f"put {Path(file_name).name} next to the registry, or fix file_name in the entry '{name}'.",
        )
    split = parts.get("split")
    if "subset" in parts or "folder" in parts or split not in (None, "train"):
        raise DataError(
            f"entry '{name}' selects {', '.join(f'{k} {v!r}' for k, v in parts.items())}, which applies to "
            "hub datasets; lmtune reads the whole local file.",
            file=reg_file,
            hint=f"save that part as its own file and remove {', '.join(parts)} from the entry '{name}'.",
        )
    return path


def map_entry(name: str, info: dict[str, Any], task: str, reg_file: str = "") -> Mapped:
    """The entry's formatting/ranking/columns/tags in lmtune's terms, checked against the task."""
    formatting = info.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        raise DataError(
            f"entry '{name}': unknown formatting {formatting!r}.",
            file=reg_file,
            hint=f"use one of {', '.join(FORMATTINGS)}.",
        )
    cols = _section(name, info, "columns", COLUMNS, reg_file)
    tags = _section(name, info, "tags", TAGS, reg_file)
    ranking = bool(info.get("ranking", False))
    limit = info.get("num_samples")
    if limit is not None and not (isinstance(limit, int) and limit >= 1):
        raise DataError(
            f"entry '{name}': num_samples must be a whole number >= 1, got {limit!r}.", file=reg_file
        )
    conversational = formatting != "alpaca"
    if "kto_tag" in cols:
        kind = "kto"
    elif ranking:
        kind = "preference"
    elif not conversational and "prompt" in cols and not {"response", "query", "history"} & cols.keys():
        kind = "text"  # LLaMA-Factory pretraining data: only a prompt column ({prompt: text})
    else:
        kind = "sft"
    _check_task(name, kind, task, formatting, reg_file)
    if not conversational and kind in ("preference", "kto") and {"query", "history"} & cols.keys():
        raise DataError(
            f"entry '{name}': alpaca preference data with query/history columns is not supported.",
            file=reg_file,
            hint="merge the query into the prompt column, or store the data as sharegpt conversations.",
        )

    if task == "pretrain":
        return Mapped("text", kind, {"text": cols.get("prompt", "instruction")}, limit=limit)
    if not conversational:
        if kind == "sft":
            return Mapped("alpaca", kind, {ALPACA_COLUMNS[k]: v for k, v in cols.items()}, limit=limit)
        if kind == "preference":
            keep = {
                "prompt": cols.get("prompt", "instruction"),
                **_pick(cols, "chosen", "rejected", "system"),
            }
            return Mapped("preference", kind, keep, limit=limit)
        keep = {"prompt": cols.get("prompt", "instruction"), "completion": cols.get("response", "output")}
        return Mapped("kto", kind, {**keep, "label": cols["kto_tag"], **_pick(cols, "system")}, limit=limit)
    # conversations: sharegpt, or openai (same columns and tags in LLaMA-Factory)
    messages = cols.get("messages", "conversations")
    turn_cols, roles = _turns(tags)
    if kind == "sft":
        if formatting == "openai" and not turn_cols and not roles:
            return Mapped("openai", kind, {"messages": messages, **_pick(cols, "tools")}, limit=limit)
        extra = _pick(cols, "system", "tools")
        return Mapped("sharegpt", kind, {"conversations": messages, **turn_cols, **extra}, roles, limit)
    if kind == "preference":
        extra = _pick(cols, "chosen", "rejected", "system", "tools")
        return Mapped(
            "sharegpt_ranking", kind, {"conversations": messages, **turn_cols, **extra}, roles, limit
        )
    # kto reads OpenAI-shaped messages: its turn keys are role/content
    turn_cols = {{"from": "role", "value": "content"}[k]: v for k, v in turn_cols.items()}
    extra = {"label": cols["kto_tag"], **_pick(cols, "system", "tools")}
    return Mapped("kto", kind, {"messages": messages, **turn_cols, **extra}, roles, limit)


def _turns(tags: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Turn keys and speaker names from `tags`, leaving out what lmtune reads by default.

    A ShareGPT turn is read from `from`/`value`, or `role`/`content` when those are the keys, and
    the usual speaker names (human/user, gpt/assistant, observation/tool, function_call, system)
    are always understood; only other names need `roles:`.
    """
    cols = {}
    if tags.get("role_tag") not in (None, "from", "role"):
        cols["from"] = tags["role_tag"]
    if tags.get("content_tag") not in (None, "value", "content"):
        cols["value"] = tags["content_tag"]
    roles = {}
    for tag, role in TAG_ROLES.items():
        speaker = tags.get(tag)
        if speaker is not None and SHAREGPT_ROLES.get(speaker.lower()) != role:
            roles[role] = speaker
    return cols, roles


def _check_task(name: str, kind: str, task: str, formatting: str, reg_file: str) -> None:
    if task == "classification":
        raise DataError(
            f"entry '{name}': LLaMA-Factory registries hold no classification data.",
            file=reg_file,
            hint="give task: classification its files with data.path or data.datasets[].path.",
        )
    if task == "pretrain":
        if formatting != "alpaca" or kind in ("preference", "kto"):
            raise DataError(
                f"entry '{name}' holds {kind if kind != 'sft' else formatting} data, not raw text for task: pretrain.",
                file=reg_file,
                hint='pretraining entries look like {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}}.',
            )
        return
    wanted = {"sft": ("sft",), "preference": ("preference", "kto")}.get(task, ())
    if kind in wanted:
        return
    fixes = {
        "preference": "it is preference data (ranking: true): use task: preference.",
        "kto": "it is KTO data (a kto_tag column): use task: preference with preference.loss: kto.",
        "text": "it is raw text for pretraining (only a prompt column): use task: pretrain.",
        "sft": "it is instruction/conversation data (no ranking: true, no kto_tag): use task: sft.",
    }
    raise DataError(f"entry '{name}' does not fit task: {task}.", file=reg_file, hint=fixes[kind])


def _section(
    name: str, info: dict[str, Any], key: str, known: tuple[str, ...], reg_file: str
) -> dict[str, str]:
    value = info.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise DataError(f"entry '{name}': {key} must be an object of names, got {value!r}.", file=reg_file)
    media = [k for k in value if k in MEDIA_COLUMNS]
    if media:
        raise DataError(
            f"entry '{name}' has {', '.join(media)} ({key}.{media[0]}): lmtune trains text-only models.",
            file=reg_file,
            hint="use a text-only dataset.",
        )
    for k in value:
        if k not in known:
            close = difflib.get_close_matches(k, known, n=1)
            did = f" Did you mean '{close[0]}'?" if close else ""
            raise DataError(
                f"entry '{name}': unknown {key} key '{k}'.{did}",
                file=reg_file,
                hint=f"LLaMA-Factory {key} keys are {', '.join(known)}.",
            )
    return dict(value)


def _pick(cols: dict[str, str], *names: str) -> dict[str, str]:
    return {k: cols[k] for k in names if k in cols}
