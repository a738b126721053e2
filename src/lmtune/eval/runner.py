"""`lmtune eval` end to end: load the data, evaluate the target (and baseline), compare, write.

Order matters for the user: the data file is read and checked before any model is loaded (a bad
file fails in a second, not after a minute of loading), and the two models are evaluated one after
the other, the first freed before the second loads, so peak memory is one model.

    eval/<name>.json          everything: options, data, each model's metrics and every prediction,
                              the comparison, lm-eval results
    eval/<name>.md | .html    the report (lmtune.eval.report)
    eval/<name>_curves.png    training curves of the run directories evaluated
    eval/<name>_rejects.jsonl records that could not be evaluated, with the reason
"""

from __future__ import annotations

import dataclasses
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.eval.evaluate import EvalOptions, evaluate
from lmtune.eval.items import EvalData, load_eval_data


@dataclass
class EvalRequest:
    target: str
    data: str | None = None
    baseline: str | None = None
    options: EvalOptions = field(default_factory=EvalOptions)
    name: str | None = None
    out_dir: str | None = None
    formats: tuple[str, ...] = ("md",)
    limit: int | None = None
    labels: list[str] | None = None
    prompt_template: str = "{text}"
    system: str | None = None
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_limit: int | None = None
    lm_eval_fewshot: int | None = None


@dataclass
class EvalOutcome:
    doc: dict[str, Any]
    json_path: Path
    written: list[Path]


def run_eval(req: EvalRequest, *, console: Any = None) -> EvalOutcome:
    from lmtune.errors import ConfigError
    from lmtune.run.layout import read_run_config

    say = console.print if console is not None else (lambda *a, **k: None)
    if not req.data and not req.lm_eval_tasks:
        raise ConfigError("nothing to evaluate: give --data FILE, --lm-eval TASKS, or both")
    run_cfg = read_run_config(req.target)
    options = _with_run_defaults(req.options, run_cfg)
    system = req.system if req.system is not None else (run_cfg.get("data") or {}).get("system")
    data = None
    if req.data:
        data = load_eval_data(
            req.data, system=system, limit=req.limit, labels=req.labels, prompt_template=req.prompt_template
        )
        say(f"Evaluating on {len(data.items)} records of {data.path} ({data.format})")
        if data.rejects:
            say(f"[yellow]{len(data.rejects)} records cannot be evaluated[/] (listed in the rejects file)")
    name = req.name or (Path(req.data).stem if req.data else "lm_eval")
    out_dir = Path(req.out_dir) if req.out_dir else _default_out(req.target)

    results: dict[str, dict[str, Any]] = {}
    lm_eval: dict[str, Any] = {}
    for role, spec in (("target", req.target), ("baseline", req.baseline)):
        if spec is None:
            continue
        results[role], tasks = _one_model(spec, data, options, req, say)
        if tasks is not None:
            lm_eval[role] = tasks

    doc = assemble_doc(
        name,
        options,
        data,
        results,
        extra_options={"limit": req.limit, "prompt_template": req.prompt_template, "system": system},
    )
    if lm_eval:
        doc["lm_eval"] = lm_eval
    json_path, written = write_outputs(doc, data, out_dir, formats=req.formats)
    return EvalOutcome(doc, json_path, written)


def assemble_doc(
    name: str,
    options: EvalOptions,
    data: EvalData | None,
    results: dict[str, dict[str, Any]],
    *,
    extra_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The eval JSON document: options, data, target (and baseline with the comparison)."""
    doc: dict[str, Any] = {
        "name": name,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "options": {**dataclasses.asdict(options), **(extra_options or {})},
    }
    if data is not None:
        doc["data"] = {
            "path": data.path,
            "kind": data.kind,
            "format": data.format,
            "records": len(data.items),
            "total": data.total,
            "rejects": len(data.rejects),
            "labels": data.labels,
        }
        doc["items"] = [i.to_dict() for i in data.items]
        doc["target"] = results["target"]
        if "baseline" in results:
            from lmtune.eval.compare import compare

            doc["baseline"] = results["baseline"]
            doc["comparison"] = compare(results["target"], results["baseline"])
    return doc


def write_outputs(
    doc: dict[str, Any], data: EvalData | None, out_dir: Path, *, formats: tuple[str, ...] = ("md",)
) -> tuple[Path, list[Path]]:
    """<name>.json, the rejects file and the report; returns the JSON path and everything written."""
    from lmtune.data.load import write_rejects
    from lmtune.eval.report import write_report
    from lmtune.run.layout import write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    name = doc["name"]
    json_path = out_dir / f"{name}.json"
    write_json(json_path, doc)
    written = [json_path]
    if data is not None and data.rejects:
        write_rejects(data.rejects, out_dir / f"{name}_rejects.jsonl")
        written.append(out_dir / f"{name}_rejects.jsonl")
    if data is not None:
        written += write_report(doc, out_dir, formats=formats)
    return json_path, written


def _one_model(
    spec: str, data: EvalData | None, options: EvalOptions, req: EvalRequest, say: Any
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load `spec`, evaluate it on `data` and the lm-eval tasks, free it."""
    from lmtune.run.layout import is_run_dir
    from lmtune.run.load import load_target

    if req.lm_eval_tasks:
        from lmtune.run.load import require_generative

        require_generative(spec, "eval --lm-eval")  # lm-eval scores text; a classifier writes none
    say(f"Loading {spec} ...")
    loaded = load_target(spec, quiet=True)
    try:
        result: dict[str, Any] = {}
        if data is not None:
            say(f"Scoring {loaded.name} ...")
            result = evaluate(loaded, data, options)
            result["target"] = spec
            if is_run_dir(spec):
                result["run_dir"] = str(Path(spec).resolve())
        tasks = None
        if req.lm_eval_tasks:
            from lmtune.eval.lm_eval_bridge import run_lm_eval

            say(f"Running lm-eval tasks {', '.join(req.lm_eval_tasks)} on {loaded.name} ...")
            tasks = run_lm_eval(
                loaded.model,
                loaded.tokenizer,
                req.lm_eval_tasks,
                limit=req.lm_eval_limit,
                num_fewshot=req.lm_eval_fewshot,
                batch_size=options.batch_size,
                seed=options.generation.seed or 0,
            )
        return result, tasks
    finally:
        del loaded
        gc.collect()


def _with_run_defaults(options: EvalOptions, run_cfg: dict[str, Any]) -> EvalOptions:
    """max_length / train_on left unset take a run directory's own values (else 1024 / all): the eval
    loss is then computed on the same tokens as the run's validation loss."""
    data = run_cfg.get("data") or {}
    return dataclasses.replace(
        options,
        max_length=options.max_length or int(data.get("max_length") or 1024),
        train_on=options.train_on or str(data.get("train_on") or "all"),
    )


def _default_out(target: str) -> Path:
    from lmtune.run.layout import is_run_dir

    return Path(target) / "eval" if is_run_dir(target) else Path("eval")
