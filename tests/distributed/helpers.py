"""Real multi-process runs for the distributed tests: `lmtune train CONFIG --nproc N` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

AUDIT = Path(__file__).resolve().parent / "audit"
SRC = Path(__file__).resolve().parents[2] / "src"


def write_config(path: Path, model_dir: Path, data: Path, out: Path, **sections) -> Path:
    """A few steps of LoRA on the tiny model, deterministic: no dropout (each rank would draw its own
    masks), a constant learning rate (so a resumed run follows the same schedule), data in file order."""
    cfg = {
        "model": {"name": str(model_dir)},
        "data": {"path": str(data), "shuffle": False, "packing": False},
        "method": {"name": "lora", "r": 4, "dropout": 0.0},
        "train": {
            "max_steps": 4,
            "batch_size": 4,
            "lr": 0.01,
            "log_steps": 1,
            "bf16": False,
            "warmup_ratio": 0,
            "scheduler": "constant",
            "compile": False,
        },
        "output": {"dir": str(out)},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def lmtune_train(
    config: Path, *args: str, audit_dir: Path | None = None, root: Path | None = None, timeout=300
):
    """Run `python -m lmtune.cli.app train CONFIG ARGS` (the launcher runs its children the same way)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    if audit_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(AUDIT), env["PYTHONPATH"]])
        env.update(LMTUNE_AUDIT_DIR=str(audit_dir), LMTUNE_AUDIT_ROOT=str(root))
    cmd = [sys.executable, "-m", "lmtune.cli.app", "train", str(config), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return done


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter_model.safetensors"))
