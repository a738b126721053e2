"""`lmtune estimate` against this machine: predicted peak memory vs the peak RSS of real
`lmtune train` runs, and the FLOPs time model vs measured CPU step times.

Memory: each case is a fresh `lmtune train` process (3 steps, batch 4 x 512 packed tokens, bf16)
under a wrapper that reads its peak RSS (RUSAGE_CHILDREN); the prediction is the same config's
estimate. Time: this CPU's bf16 matmul peak is measured once (2048^3 matmuls), then each case's
forward + backward + AdamW step is timed on a randomly initialised model of the same shape (time
does not depend on the weights' values), and compared with plan.scale's FLOPs per token divided by
that peak: the ratio is the MFU this CPU reaches.

    python benchmarks/estimate_check.py                 # tiny + SmolLM2, lora/full/freeze
    python benchmarks/estimate_check.py --only-time     # skip the training runs
Writes runs/bench-estimate/results.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "bench-estimate"
DATA = ROOT.parent / "shared" / "data" / "alpaca_en_stanford" / "alpaca_small.json"
TINY = dict(
    vocab_size=49152,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
    tie_word_embeddings=False,
)  # fmt: skip  (tests/conftest.py's TINY)
METHODS = {
    "lora": {"name": "lora", "r": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "full": {"name": "full"},
    "freeze": {"name": "freeze", "trainable_layers": 2},
}
WRAPPER = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
if done.returncode:
    sys.exit(done.stdout[-3000:] + done.stderr[-3000:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def tiny_model(folder: Path, tokenizer_from: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**TINY)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(folder)
    return folder


def config(model: str, method: dict, out: Path) -> dict:
    return {
        "model": {"name": model},
        "data": {"path": str(DATA), "format": "alpaca", "limit": 16, "max_length": 512},
        "method": method,
        "train": {"max_steps": 3, "batch_size": 4, "log_steps": 1, "bf16": True},
        "output": {"dir": str(out)},
    }


def measure_memory(name: str, raw: dict) -> dict:
    from lmtune.config.loader import load_config
    from lmtune.plan.estimate import decide_checkpointing, estimate_memory

    path = OUT / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    on, _ = decide_checkpointing(cfg, "cpu")
    e = estimate_memory(cfg, gradient_checkpointing=on, device="cpu")
    train = [sys.executable, "-m", "lmtune.cli.app", "train", str(path)]
    done = subprocess.run([sys.executable, "-c", WRAPPER, *train], capture_output=True, text=True)
    if done.returncode:
        return {"case": name, "error": done.stderr[-500:]}
    rss = int(done.stdout.strip().splitlines()[-1])
    return {"case": name, "predicted": e.peak, "measured": rss, "error_pct": 100 * (e.peak - rss) / rss}


def clock(kind: str):
    """wall: seconds on the wall; cpu: this process's CPU seconds, which on one thread leave out the
    time other jobs held the core (a load-robust figure on a shared machine)."""
    return time.process_time if kind == "cpu" else time.perf_counter


def matmul_peak(threads: int, now=time.perf_counter) -> float:
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    b = torch.randn(2048, 2048, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        t = now()
        for _ in range(4):
            a @ b
        best = min(best, (now() - t) / 4)
    return 2 * 2048**3 / best


def measure_time(
    name: str, model_ref: str, method: dict, peak: float, *, rows: int, seq: int, now=time.perf_counter
) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from lmtune.config.loader import validate_config
    from lmtune.methods.base import get_method
    from lmtune.plan.estimate import model_shape, model_spec
    from lmtune.plan.scale import flops_per_token
    from lmtune.plan.source import model_source, transformers_config

    cfg = validate_config({"model": {"name": model_ref}, "data": {"path": "x.jsonl", "max_length": seq},
                           "method": method, "train": {"batch_size": rows, "bf16": True}})  # fmt: skip
    source = model_source(cfg)
    spec, shape = model_spec(cfg, source), model_shape(source.config)
    flops = flops_per_token(spec, shape, seq=seq, method=method["name"], ckpt=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(transformers_config(source))
    model = get_method(method["name"]).prepare(model, cfg.method)
    for p in model.parameters():
        if not p.requires_grad and method["name"] not in ("full", "freeze"):
            p.data = p.data.to(torch.bfloat16)  # the frozen base in bf16, as training keeps it
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(0, shape.vocab, (rows, seq))
    times = []
    for _ in range(3):
        t = now()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(now() - t)
    measured = min(times[1:])  # the first step warms up allocator and kernels
    predicted = rows * seq * flops.per_token / peak
    return {"case": name, "gflop_per_token": flops.per_token / 1e9, "predicted_s": predicted,
            "measured_s": measured, "mfu": predicted / measured}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only-time", action="store_true")
    parser.add_argument("--only-memory", action="store_true", help="skip the timed steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=2, help="rows per timed step")
    parser.add_argument("--seq", type=int, default=256, help="tokens per row in the timed step")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="cpu: process CPU time (needs --threads 1)"
    )
    parser.add_argument("--memory-cases", nargs="*", default=None, help="e.g. tiny-full SmolLM2-135M-lora")
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu sums the CPU time of every thread: use it with --threads 1")
    now = clock(args.clock)
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from lmtune.models.resolve import resolve_model_ref

    smol = resolve_model_ref("smollm2-135m-instruct").path  # the alias imported once, outside the runs
    tiny = str(tiny_model(OUT / "tiny-model", Path(smol)))
    models = {"tiny": tiny, "SmolLM2-135M": "smollm2-135m-instruct"}
    results: dict = {"machine": os.uname().nodename, "threads": args.threads, "clock": args.clock}
    peak = matmul_peak(args.threads, now)
    results["bf16_matmul_tflops"] = peak / 1e12
    results["load_average_before"] = os.getloadavg()
    results["time"] = [
        measure_time(f"{m} {k}", ref, method, peak, rows=args.rows, seq=args.seq, now=now)
        for m, ref in models.items()
        for k, method in METHODS.items()
        if not args.only_memory
    ]
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    if not args.only_time:
        results["memory"] = [
            measure_memory(f"{m}-{k}", config(ref, method, OUT / f"run-{m}-{k}"))
            for m, ref in models.items()
            for k, method in METHODS.items()
            if args.memory_cases is None or f"{m}-{k}" in args.memory_cases
        ]
    results["load_average_after"] = os.getloadavg()
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    print(f"bf16 matmul peak: {peak / 1e12:.3f} TFLOP/s ({args.threads} threads, {args.clock} clock)\n")
    print(
        "| case | GFLOP/token | predicted step at peak | measured step | MFU reached |\n|---|---|---|---|---|"
    )
    for r in results["time"]:
        print(
            f"| {r['case']} | {r['gflop_per_token']:.3f} | {r['predicted_s']:.3f} s | {r['measured_s']:.3f} s | {r['mfu']:.0%} |"
        )
    if "memory" in results:
        print("\n| case | predicted peak | measured peak RSS | error |\n|---|---|---|---|")
        for r in results["memory"]:
            if "error" in r:
                print(f"| {r['case']} | failed: {r['error'][-120:]!r} | | |")
            else:
                print(
                    f"| {r['case']} | {r['predicted'] / 2**20:.0f} MiB | {r['measured'] / 2**20:.0f} MiB | {r['error_pct']:+.0f}% |"
                )


if __name__ == "__main__":
    main()
