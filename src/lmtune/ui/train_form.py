"""The Train form, generated from the config schema: one field per config key, named as in YAML.

Like `lmtune.config.reference` (the docs), it walks `RunConfig`'s sections, so a key added to the
schema appears in the UI with its type, default and description, and the form can never offer a
name the config would refuse. A form becomes the YAML the CLI reads: only values that differ from
the defaults are written, relative file paths are made absolute (the config file lives in the runs
folder, and relative paths in a config resolve against its folder), and the result is validated
by the same `validate_config` as `lmtune train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from lmtune.config.schema import RunConfig
from lmtune.errors import ConfigError

# Sections shown open; the others (preference, rl, eval, distributed) start collapsed.
OPEN_SECTIONS = ("model", "data", "method", "train", "output")
PATH_KEYS = ("data.path", "data.val_path", "data.registry", "eval.path")
# The UI's own defaults where the schema's would not make a usable first run from a form.
UI_DEFAULTS = {"output.name": "ui-run"}


@dataclass
class FieldSpec:
    key: str  # "train.lr" (top-level keys: "task")
    kind: str  # choice, bool, int, float, text, yaml
    default: Any  # the schema default, as the config holds it
    description: str = ""
    choices: list[str] = field(default_factory=list)
    optional: bool = False
    methods: list[str] = field(default_factory=list)  # method options: which methods read them

    @property
    def section(self) -> str:
        return self.key.split(".")[0] if "." in self.key else ""

    @property
    def form_default(self) -> Any:
        return to_form(self, UI_DEFAULTS.get(self.key, self.default))


def _is_section(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _kind(ann: Any) -> tuple[str, list[str], bool]:
    """(kind, choices, optional) for a field annotation."""
    origin, args = get_origin(ann), get_args(ann)
    optional = False
    if origin in (Union, UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        literals = [a for a in rest if get_origin(a) is Literal]
        if len(rest) == 1:
            kind, choices, _ = _kind(rest[0])
            return kind, choices, optional
        if bool in rest and literals:  # bool | Literal["auto"]
            return "choice", [*(str(v) for lit in literals for v in get_args(lit)), "true", "false"], optional
        return "yaml", [], optional
    if origin is Literal:
        return "choice", [str(a) for a in args], False
    if ann is bool:
        return "bool", [], False
    if ann is int:
        return "int", [], False
    if ann is float:
        return "float", [], False
    if ann is str:
        return "text", [], False
    return "yaml", [], False


def _spec(key: str, f: Any) -> FieldSpec:
    kind, choices, optional = _kind(f.annotation)
    default = None if f.is_required() else (f.default_factory() if f.default_factory else f.default)
    methods = (
        list((f.json_schema_extra or {}).get("methods", [])) if isinstance(f.json_schema_extra, dict) else []
    )
    return FieldSpec(key, kind, default, f.description or "", choices, optional, methods)


def form_fields() -> list[FieldSpec]:
    """Every config key, in the reference's order: top-level keys, then each section's."""
    out: list[FieldSpec] = []
    for name, f in RunConfig.model_fields.items():
        if _is_section(f.annotation):
            section: type[BaseModel] = f.annotation
            out += [_spec(f"{name}.{k}", sf) for k, sf in section.model_fields.items()]
        else:
            out.append(_spec(name, f))
    return out


def to_form(spec: FieldSpec, value: Any) -> Any:
    """A config value as its form widget holds it."""
    if spec.kind == "choice":
        return "" if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
    if spec.kind in ("text",):
        return "" if value is None else str(value)
    if spec.kind == "yaml":
        return "" if value is None else yaml.safe_dump(value, default_flow_style=True).strip()
    return value


def from_form(spec: FieldSpec, value: Any) -> Any:
    """A widget's value as the config value (a clear error naming the key when it cannot be)."""
    if value is None or (isinstance(value, str) and value.strip() == "" and spec.kind != "bool"):
        return None if spec.optional or spec.kind in ("text", "choice", "yaml") else spec.default
    if spec.kind == "choice":
        if value in ("true", "false"):
            return value == "true"
        return int(value) if value.lstrip("-").isdigit() else value
    if spec.kind in ("int", "float"):
        try:
            float(value)
        except ValueError:
            raise ConfigError(f"{spec.key}: expected a number, got {value!r}") from None
    if spec.kind == "int":
        if float(value) != int(float(value)):
            raise ConfigError(f"{spec.key}: expected a whole number, got {value}")
        return int(float(value))
    if spec.kind == "float":
        return float(value)
    if spec.kind == "yaml":
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(
                f"{spec.key}: not valid YAML ({err}); e.g. [q_proj, v_proj] or {{key: value}}"
            ) from None
    return value


def form_to_raw(
    specs: list[FieldSpec], values: list[Any], *, root: str | Path, runs_dir: str
) -> dict[str, Any]:
    """The config mapping for a filled-in form: only values that differ from the schema defaults."""
    raw: dict[str, Any] = {}
    for spec, value in zip(specs, values):
        v = from_form(spec, value)
        if spec.key in PATH_KEYS and isinstance(v, str) and v and not Path(v).is_absolute():
            v = str((Path(root).resolve() / v).resolve())
        if v == spec.default or (v is None and spec.default in ("", None)):
            continue
        if spec.methods and spec.key.startswith("method."):
            pass  # validate_config refuses an option the chosen method does not read: the user's fix
        if spec.section:
            raw.setdefault(spec.section, {})[spec.key.split(".", 1)[1]] = v
        else:
            raw[spec.key] = v
    output = raw.setdefault("output", {})
    name = output.get("name") or UI_DEFAULTS["output.name"]
    output["name"] = name
    output.setdefault("dir", str(Path(runs_dir) / name))
    return raw


def validated(raw: dict[str, Any]) -> RunConfig:
    """The same validation (and messages) as `lmtune train`."""
    from lmtune.config.loader import validate_config

    return validate_config(raw, source="the Train form")


def to_yaml(raw: dict[str, Any]) -> str:
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def method_visible(spec: FieldSpec, method: str) -> bool:
    """Method options are shown only for the methods that read them."""
    return not spec.methods or method in spec.methods
