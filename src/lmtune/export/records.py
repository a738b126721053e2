"""Which records a quantized export is calibrated on and measured on.

Perplexity must be measured on records the model was not trained on, and GPTQ/AWQ calibration
should see what the model will be asked (its own training data, in its chat template), so both come
from the run:

- held-out (perplexity): `--data FILE` if given; else the run's validation records, rebuilt as
  training split them (data.val_path, or data.val_size of data.path with data.seed); else eval.path;
- calibration (GPTQ/AWQ): `--calib FILE` if given, whose last `CALIB_HELD_OUT` share is kept back
  as the held-out records (unless `--data` names others); else the run's training records (data.path
  minus the validation split).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError

CALIB_HELD_OUT = 0.2  # share of a --calib file kept back for perplexity
HELD_OUT_LIMIT = 256


@dataclass
class ExportRecords:
    """Held-out items (perplexity) and calibration items (GPTQ/AWQ), with where they came from."""

    held_out: list[Any] = field(default_factory=list)
    held_out_source: str = ""
    calib: list[Any] = field(default_factory=list)
    calib_source: str = ""


def _chat_items(path: str | Path, limit: int | None = None) -> list[Any]:
    from lmtune.eval.items import load_eval_data

    return [i for i in load_eval_data(str(path), limit=limit).items if i.messages]


def _run_config(target: str) -> dict[str, Any]:
    from lmtune.run.layout import read_run_config

    return read_run_config(target)  # {} for a folder, alias or hub id: no run data to use


def export_records(target: str, *, data: Path | None, calib: Path | None, need_calib: bool) -> ExportRecords:
    """The records for one export (module docstring); empty lists where there are none."""
    from lmtune.data.split import split_records

    out = ExportRecords()
    cfg = _run_config(target)
    d = cfg.get("data") or {}
    if calib is not None:
        items = _chat_items(calib)
        if not items:
            raise ConfigError(
                f"{calib}: no chat records to calibrate on; give a JSONL file of conversations "
                '({"messages": [...]}) or prompt/answer records'
            )
        if data is None and len(items) >= 2:
            keep = max(1, round(CALIB_HELD_OUT * len(items)))
            out.calib, out.held_out = items[:-keep], items[-keep:]
            out.calib_source = f"{calib} (first {len(items) - keep} records)"
            out.held_out_source = f"{calib} (last {keep} records, not calibrated on)"
        else:
            out.calib, out.calib_source = items, f"{calib} ({len(items)} records)"
    train: list[Any] = []
    val: list[Any] = []
    if d.get("path") and isinstance(d["path"], str):
        everything = _chat_items(d["path"])
        size = d.get("val_size") or 0
        if d.get("val_path"):
            train, val = everything, _chat_items(d["val_path"])
        elif size:
            size = int(size) if size >= 1 else size
            train, val, _ = split_records(everything, val_size=size, seed=int(d.get("seed", 42)))
        else:
            train = everything
    if need_calib and not out.calib:
        if not train:
            raise ConfigError(
                f"{target}: GPTQ/AWQ calibrate on the run's training records, and there are none here "
                "(not a run directory, or its data.path has no chat records); give --calib FILE.jsonl"
            )
        out.calib, out.calib_source = (
            train,
            f"the run's training records ({d['path']}, validation split removed)",
        )
    if data is not None:
        out.held_out, out.held_out_source = _chat_items(data, HELD_OUT_LIMIT), str(data)
    elif not out.held_out:
        if val:
            out.held_out = val[:HELD_OUT_LIMIT]
            out.held_out_source = f"the run's validation records ({len(out.held_out)})"
        elif (cfg.get("eval") or {}).get("path"):
            out.held_out = _chat_items(cfg["eval"]["path"], HELD_OUT_LIMIT)
            out.held_out_source = f"the run's eval.path {cfg['eval']['path']}"
    return out
