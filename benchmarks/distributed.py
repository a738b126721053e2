"""One machine: 1 process x 2 threads against 2 processes x 1 thread, for DDP and FSDP2.

    python benchmarks/distributed.py                      # CPU, smollm2-135m-instruct, LoRA, 6 steps
    python benchmarks/distributed.py --model DIR --steps 4 --method full
    python benchmarks/distributed.py --gpus 2             # CUDA: 1 GPU against N GPUs (DDP, FSDP)

Every configuration trains the same global batch (`--batch` samples per step: one process takes
all of it, N processes take batch/N each) on examples/data/identity_train.jsonl, launched through
torch.distributed.run exactly as `torchrun -m lmtune.cli.app train` would be. Each process records
its own peak memory (max RSS; on CUDA also torch.cuda.max_memory_allocated) when it exits.
Reported: steady tokens/s (real tokens, after the first step) from the run's summary.json, and the
peak per rank. Results are printed as a Markdown table and written to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_main(out_dir: str) -> None:
    """Run inside each launched process: lmtune's CLI, then this rank's peak memory to a file."""
    import atexit
    import resource

    def record() -> None:
        peak = {"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        try:
            import torch

            if torch.cuda.is_available():
                peak["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        except ImportError:
            pass
        rank = os.environ.get("RANK", "0")
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(peak))

    atexit.register(record)
    from lmtune.cli.app import main

    main()


def config(args, out: Path, per_device: int, strategy: str) -> Path:
    import yaml

    cfg = {
        "model": {"name": args.model},
        "data": {"path": str(ROOT / "examples/data/identity_train.jsonl"), "max_length": 256},
        "method": {"name": args.method},
        "train": {"max_steps": args.steps, "batch_size": per_device, "log_steps": 1, "compile": False},
        "output": {"dir": str(out / "run"), "overwrite": True},
        "distributed": {"strategy": strategy},
    }
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_one(args, name: str, nproc: int, threads: int, strategy: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"bench-dist-{name}-"))
    cfg = config(args, out, args.batch // nproc, strategy)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    if not args.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = [*launcher, __file__, "--child", str(out), "train", str(cfg)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    row = {"config": name, "processes": nproc, "threads_per_process": threads, "strategy": strategy}
    if done.returncode != 0:
        row["error"] = (done.stderr or done.stdout).strip().splitlines()[-1][:200]
        return row
    summary = json.loads((out / "run" / "summary.json").read_text())
    row["tokens_per_s"] = summary.get("speed", {}).get("steady_tokens_per_second")
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    row["peak_rss_mib_per_rank"] = [round(r["max_rss_mib"]) for r in ranks]
    if ranks and "cuda_max_allocated_mib" in ranks[0]:
        row["cuda_peak_mib_per_rank"] = [round(r["cuda_max_allocated_mib"]) for r in ranks]
    return row


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        out_dir = sys.argv[2]
        sys.argv = [sys.argv[0], *sys.argv[3:]]
        child_main(out_dir)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--method", default="lora")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=4, help="global batch (samples per optimizer step)")
    p.add_argument("--gpus", type=int, default=0, help="CUDA: compare 1 GPU with this many")
    p.add_argument("--out", default="runs/bench-distributed.json")
    args = p.parse_args()
    if args.gpus:
        plans = [("1 GPU", 1, 1, "ddp")] + [
            (f"{args.gpus} GPUs {s}", args.gpus, 1, s) for s in ("ddp", "fsdp")
        ]
    else:
        plans = [("1 proc x 2 threads", 1, 2, "none")]
        plans += [(f"2 procs x 1 thread {s}", 2, 1, s) for s in ("ddp", "fsdp")]
    rows = []
    for name, nproc, threads, strategy in plans:
        print(f"running {name} ...", flush=True)
        rows.append(run_one(args, name, nproc, threads, strategy))
    print("\n| configuration | tokens/s | peak RSS per rank (MiB) | CUDA peak per rank (MiB) |")
    print("|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['config']} | failed: {r['error']} | | |")
            continue
        cuda = r.get("cuda_peak_mib_per_rank", "")
        print(f"| {r['config']} | {r['tokens_per_s']} | {r['peak_rss_mib_per_rank']} | {cuda} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
