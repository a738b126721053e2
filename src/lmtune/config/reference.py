"""Render the config reference from the schema, so the docs can never drift from the code."""

from __future__ import annotations

import json
from types import UnionType
from typing import Literal, Union, get_args, get_origin

from pydantic import BaseModel

from lmtune.config.schema import DatasetEntry, RewardEntry, RunConfig


def _type_name(ann) -> str:
    """`Literal['a','b'] | None` -> `a, b or null`: what a user may write, not Python's spelling."""
    origin, args = get_origin(ann), get_args(ann)
    if origin is Literal:
        return ", ".join(str(a) for a in args)
    if origin in (Union, UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', origin)}[{inner}]"
    return getattr(ann, "__name__", str(ann))


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return json.dumps(field.default_factory())
    return json.dumps(field.default)


def config_reference(*, title: bool = True, level: int = 2) -> str:
    """Markdown: one table per section, with key, type, default and description.

    `title=False, level=4` is the form embedded in the README.
    """
    out = ["# lmtune config reference", "", "Generated from the schema by `lmtune config schema`.", ""]
    if not title:
        out = []
    sections = {k: f for k, f in RunConfig.model_fields.items() if _is_section(f.annotation)}
    top = {k: f for k, f in RunConfig.model_fields.items() if k not in sections}
    out += _table(f"{'#' * level} top level", top.items(), "")
    for section, sfield in sections.items():
        model: type[BaseModel] = sfield.annotation  # type: ignore[assignment]
        out += _table(f"{'#' * level} {section}", model.model_fields.items(), f"{section}.")
        if section == "data":
            out += _table(
                f"{'#' * (level + 1)} data.datasets entries",
                DatasetEntry.model_fields.items(),
                "data.datasets[].",
            )
        if section == "rl":
            out += _table(
                f"{'#' * (level + 1)} rl.rewards entries", RewardEntry.model_fields.items(), "rl.rewards[]."
            )
    return "\n".join(out)


def _is_section(ann) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _table(heading: str, fields, prefix: str) -> list[str]:
    out = [heading, "", "| key | type | default | description |", "|---|---|---|---|"]
    for name, f in fields:
        desc = (f.description or "").replace("|", "\\|")
        methods = (f.json_schema_extra or {}).get("methods")  # type: ignore[union-attr]
        if methods:
            desc = f"*({', '.join(methods)})* {desc}"
        typ = _type_name(f.annotation).replace("|", "\\|")
        out.append(f"| `{prefix}{name}` | {typ} | `{_default(f)}` | {desc} |")
    out.append("")
    return out
