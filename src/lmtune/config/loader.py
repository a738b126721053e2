"""Load a YAML config, apply `--set` overrides, validate, and explain mistakes in one sentence.

Nothing here rewrites the user's settings: the only changes are the overrides the user typed.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from lmtune.config.schema import RunConfig
from lmtune.errors import ConfigError

# Names users bring from transformers / PEFT / LLaMA-Factory / Axolotl, for "did you mean".
SYNONYMS = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "micro_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "gradient_accumulation": "grad_accum",
    "lr_scheduler_type": "scheduler",
    "logging_steps": "log_steps",
    "lora_r": "r",
    "rank": "r",
    "lora_rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lora_target": "target_modules",
    "lora_target_modules": "target_modules",
    "finetuning_type": "name",
    "model_name_or_path": "name",
    "base_model": "name",
    "cutoff_len": "max_length",
    "sequence_len": "max_length",
    "max_seq_length": "max_length",
    "output_dir": "dir",
    "freeze_trainable_layers": "trainable_layers",
    "freeze_extra_modules": "extra_modules",
    "loraplus_lr_ratio": "lora_plus_ratio",
    "init_lora_weights": "init",
    "additional_target": "modules_to_save",
    "quantization_bit": "bits",
    "bnb_4bit_quant_type": "quant_type",
    "bnb_4bit_use_double_quant": "double_quant",
    "bnb_4bit_compute_dtype": "compute_dtype",
    "optimizer": "optim",
    "stage": "task",
    "pref_loss": "loss",
    "pref_beta": "beta",
    "dpo_beta": "beta",
    "dataset": "datasets",
    "dataset_dir": "registry",
    "mix_strategy": "mix",
    "interleave_probs": "weight",
    "rpo_alpha": "sft_weight",
    "pref_ftx": "sft_weight",
    "kto_chosen_weight": "desirable_weight",
    "kto_rejected_weight": "undesirable_weight",
}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read `path` (or start from defaults), apply `section.key=value` overrides, validate.

    Relative data paths are resolved against the config file's folder, so a config works from
    any working directory.
    """
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"Config file {p} not found.")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: invalid YAML: {_yaml_problem(err)}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping of sections (model, data, method, train, ...).")
        base = p.resolve().parent
        raw.setdefault("output", {})
        if isinstance(raw["output"], dict):
            raw["output"].setdefault("name", p.stem)
    for item in overrides or []:
        apply_override(raw, item)
    cfg = validate_config(raw, source=str(path) if path else "config")
    return resolve_paths(cfg, base)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `a.b=c` override in place; the value is parsed as YAML (numbers, lists, bools)."""
    if "=" not in item:
        raise ConfigError(f"Override '{item}' must look like section.key=value (e.g. train.lr=1e-4).")
    key, _, value = item.partition("=")
    parts = [k for k in key.strip().split(".") if k]
    if len(parts) < 2 and parts != ["task"]:
        raise ConfigError(f"Override '{item}': name a section and a key, e.g. train.{key.strip()}={value}.")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    node = raw
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"Override '{item}': '{part}' is not a section.")
        node = nxt
    node[parts[-1]] = parsed


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        lines = list(dict.fromkeys(_explain(e) for e in _merge_unions(err.errors())))
        if len(lines) == 1:  # the usual case: one mistake, one line
            raise ConfigError(f"{source}: invalid configuration: {lines[0]}") from None
        raise ConfigError(f"{source}: invalid configuration:\n  - " + "\n  - ".join(lines)) from None


def _merge_unions(errors: list[Any]) -> list[dict[str, Any]]:
    """One error per key: pydantic reports a value that fits no member of `bool | Literal['auto']`
    once per member (loc ending in the member's name); those become one 'expected A or B' line."""
    out: list[dict[str, Any]] = []
    groups: dict[tuple, dict[str, Any]] = {}
    for e in errors:
        loc = tuple(str(x) for x in e["loc"])
        if len(loc) > 1 and (loc[-1] in _TYPE_TAGS or "[" in loc[-1]) and e["type"] != "value_error":
            key = loc[:-1]
            if key in groups:
                groups[key]["msg"] += " or " + _expected(e)
                continue
            groups[key] = {**e, "loc": key, "type": "union", "msg": "Input should be " + _expected(e)}
            out.append(groups[key])
        else:
            out.append(e)
    return out


_TYPE_TAGS = {"bool", "int", "float", "str", "list", "dict", "none", "is-instance", "function-after"}


def _expected(e: dict[str, Any]) -> str:
    """'a valid boolean' from 'Input should be a valid boolean, unable to ...'."""
    return e["msg"].removeprefix("Input should be ").split(",")[0]


def _explain(e: dict[str, Any]) -> str:
    loc = [str(x) for x in e["loc"]]
    name = ".".join(loc) or "(top level)"
    if e["type"] == "extra_forbidden":
        valid = _field_names(loc[:-1])
        synonym = SYNONYMS.get(loc[-1].lower())
        key = loc[-1].lower()
        # a known synonym, else a name the key starts with or that starts with it (lr_rate -> lr,
        # max_len -> max_length), else the closest spelling
        starts = sorted(
            (v for v in valid if len(v) >= 2 and (key.startswith(v) or v.startswith(key))), key=len
        )
        guess = (
            [synonym]
            if synonym in valid
            else starts[-1:] or difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        )
        where = ".".join(loc[:-1]) or "top level"
        hint = f" Did you mean '{'.'.join([*loc[:-1], guess[0]])}'?" if guess else ""
        return f"unknown key '{name}'.{hint} Valid keys in {where}: {', '.join(valid)}."
    if e["type"] == "value_error":
        return e["msg"].removeprefix("Value error, ")
    got = repr(e.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."
    did = ""
    if e["type"] == "literal_error" and isinstance(e.get("input"), str):
        choices = [
            c.strip().strip("'")
            for c in str(e.get("ctx", {}).get("expected", "")).replace(" or ", ",").split(",")
        ]
        close = difflib.get_close_matches(e["input"], [c for c in choices if c], n=1, cutoff=0.6)
        did = f" Did you mean '{close[0]}'?" if close else ""
    return f"{name}: {e['msg']} (got {got}).{did}"


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line: what is wrong and where (line, column), without YAML's multi-line excerpt."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(err, "context", None)
    return (
        f"{problem}{where}"
        + (f" ({context})" if context else "")
        + (
            ". Fix: check the indentation and quoting there (a value containing ': ' or starting with "
            "'{', '[', '*' or '&' needs quotes)."
        )
    )


def _field_names(loc: list[str]) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(part)
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Make data/eval file paths absolute relative to the config file's folder."""

    def fix(p: str | None) -> str | None:
        if p is None or Path(p).is_absolute():
            return p
        return str((base / p).resolve())

    cfg.data.path = fix(cfg.data.path)
    cfg.data.val_path = fix(cfg.data.val_path)
    cfg.data.registry = fix(cfg.data.registry)
    for entry in cfg.data.datasets:
        entry.path = fix(entry.path)
    cfg.eval.path = fix(cfg.eval.path)
    for reward in cfg.rl.rewards:  # path/to/rewards.py:function is relative to the config file too
        file, sep, func = reward.reward.rpartition(":")
        if sep and file.endswith(".py"):
            reward.reward = f"{fix(file)}:{func}"
    return cfg


def dump_config(cfg: RunConfig) -> str:
    """The resolved config (defaults filled in) as YAML, in section order."""
    data = cfg.model_dump(mode="json")
    data["method"] = cfg.method.options()  # only the options the chosen method reads
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
