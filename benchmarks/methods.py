"""Compare every lmtune fine-tuning method on SmolLM2-135M-Instruct with one budget of examples.

Why: users pick a method by what it costs (trainable parameters, memory, speed) and what it buys
(loss, whether the model learns a new identity). Every (method, task) pair runs in its own
subprocess so its peak memory is its own and a failing method (missing package, unsupported model,
not written yet) becomes an error in its row instead of stopping the benchmark.

    python benchmarks/methods.py                       # all methods, both tasks -> docs/methods.md
    python benchmarks/methods.py --methods lora full --tasks identity --examples 16 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"

# Per-method learning rate and method options: the only things that differ between methods.
SETTINGS: dict[str, dict[str, Any]] = {
    "lora": {"lr": 1e-3, "r": 16, "alpha": 32},
    "qlora": {"lr": 1e-3, "r": 16, "alpha": 32, "bits": 4},
    "full": {"lr": 1e-4},
    "freeze": {"lr": 1e-4, "trainable_layers": 2},
    "prefix": {"lr": 1e-2, "num_virtual_tokens": 20},
    "prompt": {"lr": 3e-2, "num_virtual_tokens": 20},
    "ptuning": {"lr": 1e-2, "num_virtual_tokens": 20},
    "adapter": {"lr": 1e-3, "adapter_type": "pfeiffer", "reduction_factor": 16},
    "bitfit": {"lr": 3e-3},
    "ia3": {"lr": 3e-3},
    "ln_tuning": {"lr": 3e-3},
}
DEFAULT_LR = 1e-3  # for a method added to lmtune after this table was written
# Identical for every method (max_length and seed also apply to the data).
COMMON = {"batch_size": 8, "max_length": 256, "seed": 42, "warmup_ratio": 0.1, "scheduler": "cosine"}
TASKS: dict[str, dict[str, Any]] = {
    "identity": {
        "path": ROOT / "examples/data/identity_train.jsonl",
        "val": 8,
        "eval": ROOT / "examples/data/identity_eval.jsonl",
    },
    "alpaca": {"path": (ROOT / "../shared/data/alpaca_en_stanford/alpaca_small.json").resolve(), "val": 20},
}
RUNS = ROOT / "runs" / "bench-methods"  # runs/ is git-ignored


def val_count(task: str, examples: int) -> int:
    """Held-out records; a tiny smoke budget keeps at least three quarters for training."""
    return max(1, min(TASKS[task]["val"], examples // 4))


def build_config(spec: dict[str, Any]) -> Any:
    """The RunConfig of one (method, task) run; everything but lr and method options is shared."""
    from lmtune.config.loader import validate_config

    task = TASKS[spec["task"]]
    options = dict(SETTINGS.get(spec["method"], {"lr": DEFAULT_LR}))
    lr = options.pop("lr")
    raw: dict[str, Any] = {
        "model": {"name": MODEL, "device": spec["device"]},
        "data": {
            "path": str(task["path"]),
            "limit": spec["examples"],
            "val_size": val_count(spec["task"], spec["examples"]),
            "max_length": COMMON["max_length"],
            "seed": COMMON["seed"],
        },
        "method": {"name": spec["method"], **options},
        "train": {"epochs": spec["epochs"], "lr": lr, "log_steps": 5}
        | {k: COMMON[k] for k in ("batch_size", "seed", "warmup_ratio", "scheduler")},
        "output": {"dir": spec["run_dir"], "overwrite": True},
    }
    if task.get("eval"):
        raw["eval"] = {"path": str(task["eval"]), "max_new_tokens": 40, "compare_base": spec["compare_base"]}
    return validate_config(raw, source=f"{spec['method']}/{spec['task']}")


def run_one(spec: dict[str, Any]) -> None:
    """Child process: train once, write the row (or the error) as json to spec['result']."""
    import resource

    row: dict[str, Any] = {}
    try:
        from lmtune.train.runner import train

        s = train(build_config(spec)).summary
        p, checks = s["parameters"], s["checks"]
        before, after = checks.get("before") or {}, checks.get("after") or {}
        row = {
            "total_params": p["total"],
            "trainable": p["trainable"],
            "trainable_percent": p["trainable_percent"],
            "train_samples": s["data"]["train_samples"],
            "val_samples": s["data"]["val_samples"],
            "steps": s["steps"],
            "tokens_seen": s["tokens_seen"],
            "train_seconds": s["train_seconds"],
            "tokens_per_s": s["tokens_seen"] / s["train_seconds"] if s["train_seconds"] else None,
            "train_loss_last": s["train_loss"]["last"],
            "eval_loss_before": s["eval_loss"]["before"],
            "eval_loss_after": s["eval_loss"]["after"],
            "exact_match_before": before.get("exact_match"),
            "exact_match_after": after.get("exact_match"),
            "contains_after": after.get("contains"),
        }
    except Exception as err:  # any failure is a result of the benchmark, not a crash
        traceback.print_exc()
        from lmtune.errors import LmtuneError

        row["error"] = str(err) if isinstance(err, LmtuneError) else f"{type(err).__name__}: {err}"
    row["peak_rss_mib_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import torch

    if torch.cuda.is_available():
        row["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(spec["result"]).write_text(json.dumps(row), encoding="utf-8")


def spawn(spec: dict[str, Any], log: Path) -> dict[str, Any]:
    """Run one spec in a fresh interpreter; peak RSS comes from that child's own rusage (wait4)."""
    result = Path(spec["result"])
    result.unlink(missing_ok=True)
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    row: dict[str, Any] = json.loads(result.read_text()) if result.is_file() else {}
    row["wall_seconds"] = round(time.perf_counter() - started, 1)
    row["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
    if not result.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        row["error"] = f"child exited with code {proc.returncode}: {tail[0]}"
    return row


def proc_field(path: str, key: str) -> str | None:
    """The value of the first `key: value` line of a /proc file (None off Linux)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), None)


def machine(device: str) -> str:
    """CPU model, cores, RAM, torch and GPU: what the numbers depend on."""
    import torch

    cpu = proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown CPU"
    mem = proc_field("/proc/meminfo", "MemTotal")  # "24683736 kB"
    ram = f", {int(mem.split()[0]) / 2**20:.0f} GiB RAM" if mem else ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from lmtune.train.args import use_bf16

    cuda = torch.cuda.is_available() and device != "cpu"
    gpu = torch.cuda.get_device_name(0) if cuda else "none"
    bf16 = "on" if use_bf16("auto", "cuda" if cuda else "cpu") else "off"
    return (
        f"{cpu}, {cores} cores{ram}; torch {torch.__version__}; GPU: {gpu}; "
        f"Python {platform.python_version()}; bf16 mixed precision: {bf16}"
    )


def fmt(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def table(rows: list[dict[str, Any]], task: str) -> list[str]:
    """One markdown table: a row per method, errors in their own column."""
    ident = task == "identity"
    head = ["method", "lr", "trainable params", "trainable %", "peak RSS MiB"]
    if any("cuda_peak_mib" in r for r in rows):
        head.append("GPU peak MiB")
    head += ["tokens/s", "train s", "final train loss", "eval loss before → after"]
    head += ["exact match", "contains"] if ident else []
    lines = ["| " + " | ".join([*head, "error"]) + " |", "|" + "---|" * (len(head) + 1)]
    for r in rows:
        ok = "error" not in r
        cells = [r["method"], f"{r['lr']:g}"]
        cells += [f"{r['trainable']:,}", f"{r['trainable_percent']:.3f}"] if ok else ["-", "-"]
        cells.append(fmt(r.get("peak_rss_mib"), ".0f"))
        if "GPU peak MiB" in head:
            cells.append(fmt(r.get("cuda_peak_mib"), ".0f"))
        cells += [
            fmt(r.get("tokens_per_s"), ".0f"),
            fmt(r.get("train_seconds"), ".1f"),
            fmt(r.get("train_loss_last")),
        ]
        cells.append(f"{fmt(r.get('eval_loss_before'))} → {fmt(r.get('eval_loss_after'))}" if ok else "-")
        cells += [pct(r.get("exact_match_after")), pct(r.get("contains_after"))] if ident else []
        err = " ".join(r.get("error", "").split()).replace("|", "\\|")
        cells.append(err[:300] + ("…" if len(err) > 300 else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report(rows: list[dict[str, Any]], args: argparse.Namespace, info: str, path: Path) -> None:
    """docs/methods.md (and the raw rows beside it as .json); rewritten after every run."""
    from lmtune.config.schema import METHODS

    rows = sorted(rows, key=lambda r: (list(TASKS).index(r["task"]), METHODS.index(r["method"])))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [
        "# Fine-tuning methods compared on SmolLM2-135M-Instruct",
        "",
        f"Date: {datetime.now():%Y-%m-%d %H:%M}. Machine: {info}. Device: {args.device}.",
        "",
        "## Budget (identical for every method)",
        "",
        f"- model `{MODEL}`; first {args.examples} records of each task file, of which "
        + ", ".join(f"{t}: {val_count(t, args.examples)}" for t in tasks)
        + " held out for validation loss",
        f"- {args.epochs:g} epochs, batch size {COMMON['batch_size']}, max_length {COMMON['max_length']}, "
        f"seed {COMMON['seed']}, {COMMON['scheduler']} schedule with warmup {COMMON['warmup_ratio']}, "
        "AdamW, bf16 mixed precision where the hardware has it (train.bf16: auto)",
        "- per-method learning rate and options: "
        + "; ".join(
            f"{m} lr {SETTINGS.get(m, {'lr': DEFAULT_LR})['lr']:g}"
            + "".join(f", {k}={v}" for k, v in SETTINGS.get(m, {}).items() if k != "lr")
            for m in methods
        ),
        "",
        "Peak RSS is the whole training process (Python, model, data, optimizer); tokens/s counts "
        "non-padding tokens over the training loop only; final train loss is the last logged value "
        "(mean over the last 5 steps at most).",
    ]
    for task in tasks:
        task_rows = [r for r in rows if r["task"] == task]
        if not task_rows:
            continue
        samples = next((r for r in task_rows if "train_samples" in r), {})
        lines += ["", f"## {task}: `{Path(TASKS[task]['path']).name}`", ""]
        if samples:
            lines.append(
                f"{samples['train_samples']} training / {samples['val_samples']} validation samples."
            )
        base = next(
            (r["exact_match_before"] for r in task_rows if r.get("exact_match_before") is not None), None
        )
        if task == "identity":
            lines.append(
                f"Exact match on the held-out identity checks before training (base model): {pct(base)}."
            )
        lines += ["", *table(task_rows, task)]
    lines += [
        "",
        "Re-run with `python benchmarks/methods.py` (`--help` for a subset of methods, tasks or budget).",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    path.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    from lmtune.config.schema import METHODS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    ap.add_argument(
        "--examples", type=int, default=200, help="records read from each task file (default 200)"
    )
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "methods.md")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument(
        "--update",
        action="store_true",
        help="keep the rows of an earlier run with the same budget (from OUT's .json) and replace "
        "only the (method, task) pairs run now",
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one spec (json) in this process
    args = ap.parse_args(argv)
    if args.one:
        return run_one(json.loads(args.one))
    info = machine(args.device)
    print(f"Machine: {info}", flush=True)
    (RUNS / "logs").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    budget = {"examples": args.examples, "epochs": args.epochs}
    earlier = args.out.with_suffix(".json")
    if args.update and earlier.is_file():
        rerun = {(m, t) for m in args.methods for t in args.tasks}
        rows = [
            r
            for r in json.loads(earlier.read_text(encoding="utf-8"))
            if (r["method"], r["task"]) not in rerun and all(r.get(k) == v for k, v in budget.items())
        ]
    total, n, need_base = len(args.methods) * len(args.tasks), 0, True
    started = time.perf_counter()
    for task in args.tasks:
        for method in args.methods:
            n += 1
            name = f"{task}-{method}"
            spec = {
                "method": method,
                "task": task,
                "examples": args.examples,
                "epochs": args.epochs,
                "device": args.device,
                "run_dir": str(RUNS / name),
                "result": str(RUNS / "logs" / f"{name}.json"),
                "compare_base": task == "identity" and need_base,
            }
            print(f"[{n}/{total}] {method} on {task} ...", end=" ", flush=True)
            row = {
                "method": method,
                "task": task,
                "lr": SETTINGS.get(method, {"lr": DEFAULT_LR})["lr"],
                **budget,
            }
            row |= spawn(spec, RUNS / "logs" / f"{name}.log")
            need_base = need_base and row.get("exact_match_before") is None
            rows.append(row)
            if "error" in row:
                print(f"error after {row['wall_seconds']} s: {row['error'][:200]}", flush=True)
            else:
                em = f", exact match {pct(row['exact_match_after'])}" if task == "identity" else ""
                print(
                    f"{row['wall_seconds']} s: {row['trainable']:,} trainable, peak {row['peak_rss_mib']:.0f} MiB, "
                    f"{fmt(row['tokens_per_s'], '.0f')} tok/s, loss {fmt(row['train_loss_last'])}, "
                    f"eval {fmt(row['eval_loss_before'])} -> {fmt(row['eval_loss_after'])}{em}",
                    flush=True,
                )
            report(rows, args, info, args.out)
    print(
        f"Wrote {args.out} and {args.out.with_suffix('.json')} in {time.perf_counter() - started:.0f} s "
        f"(logs and run dirs: {RUNS})"
    )


if __name__ == "__main__":
    main()
