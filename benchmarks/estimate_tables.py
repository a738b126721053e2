"""Memory by model size: `lmtune estimate`'s GPU plan for Qwen2.5-shaped 0.5B/1.5B/7B/14B models x
methods x strategies at 8 GPUs, written into docs/estimate.md and docs/distributed.md between their
markers.

The models are their config.json only (benchmarks/model_shapes/, copied from the public Qwen2.5
configs' sizes): no weights, no hub. Run:

    python benchmarks/estimate_tables.py            # print the table
    python benchmarks/estimate_tables.py --write    # and replace it in both pages
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from lmtune.config.loader import validate_config
from lmtune.plan.hardware import load_prices, pick_gpus
from lmtune.plan.report import build_plan
from lmtune.plan.scale import select_strategies

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "benchmarks" / "model_shapes"
SIZES = ["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b", "qwen2.5-14b"]
METHODS = {
    "full": {"name": "full"},
    "LoRA r=16": {"name": "lora", "r": 16},
    "QLoRA r=16": {"name": "qlora", "r": 16},
}
STRATEGIES = ["ddp", "zero2", "zero3", "zero3-offload-all", "fsdp"]
SETTINGS = {"data": {"path": "none.jsonl", "max_length": 2048}, "train": {"batch_size": 1, "bf16": True}}
START, END = "<!-- memory-by-size:start -->", "<!-- memory-by-size:end -->"
DOCS = [ROOT / "docs" / "estimate.md", ROOT / "docs" / "distributed.md"]


def table(world: int = 8) -> str:
    gpus = pick_gpus(["a100-80g"])
    rows = [s for key in STRATEGIES for s in select_strategies(None, None, None) if s.key == key]
    names = [s.name for s in rows]
    out = [
        f"GiB per GPU at {world} GPUs (1 node x {world}), per-GPU batch 1 x 2048 tokens, bf16, flash attention, "
        "gradient checkpointing on, AdamW; LoRA/QLoRA on all linear layers. "
        "`fits` marks what fits an 80 GB GPU (A100 80G). QLoRA under ZeRO/FSDP is what the estimate "
        "computes, but `lmtune train` refuses that combination (4-bit weights are not sharded): *refused*.",
        "",
        "| model | method | parameters | trainable | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for size in SIZES:
        for label, method in METHODS.items():
            raw = {"model": {"name": str(SHAPES / size)}, "method": method, **SETTINGS}
            raw["train"] = {**SETTINGS["train"], "gradient_checkpointing": True}
            cfg = validate_config(raw)
            plan = build_plan(
                cfg, gpus=gpus, nproc=world, nodes=1, strategies=rows, prices=load_prices(), tokens=10**9
            )
            cells = []
            for row in plan.rows_on:
                mark = " fits" if row.total <= gpus[0].memory else ""
                refused = method["name"] == "qlora" and row.strategy.key != "ddp"
                cells.append(f"{row.total / 2**30:.1f}{mark}" + (" *refused*" if refused else ""))
            est = _counts(cfg)
            out.append(
                f"| {size} | {label} | {est[0] / 1e9:.2f}B | {est[1] / 1e6:,.1f}M | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(out)


def _counts(cfg) -> tuple[int, int]:
    from lmtune.plan.estimate import model_spec
    from lmtune.plan.source import model_source

    spec = model_spec(cfg, model_source(cfg))
    return spec.total, spec.trainable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the table in docs/estimate.md")
    parser.add_argument("--world", type=int, default=8)
    args = parser.parse_args()
    text = table(args.world)
    print(text)
    for doc in DOCS if args.write else []:
        body = doc.read_text()
        new = re.sub(
            re.escape(START) + ".*?" + re.escape(END), START + "\n" + text + "\n" + END, body, flags=re.S
        )
        if new == body and START not in body:
            raise SystemExit(f"{doc} has no {START} ... {END} markers")
        doc.write_text(new)


if __name__ == "__main__":
    main()
