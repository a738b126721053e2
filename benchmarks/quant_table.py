"""The quantization table in docs/export.md: every format and scheme of one run, measured alike.

    PYTHONPATH=src python benchmarks/quant_table.py runs/quickstart --out runs/quant-table --group-size 64

For the run's merged model: fp32 and bf16 (transformers), int8 (torchao) and int4 (bitsandbytes NF4)
folders, GPTQ and AWQ W4A16 (llm-compressor), and GGUF f16 / q8_0 / q6_k / q5_k_m / q4_k_m / q4_0 (in
llama.cpp). Each row: size on disk, perplexity on the run's validation records (answer tokens),
greedy agreement with the reference on the fixed prompt set (export/quality.py), generation
tokens/s on this machine. References: the transformers rows and GGUF f16 against fp32 in
transformers; the quantized GGUFs against the f16 GGUF in llama.cpp (so only quantization differs).
A GPTQ/AWQ folder already in OUT (from `lmtune export ... --format gptq|awq`, which runs the same
code) is read instead of re-made: on a loaded 2-core CPU each takes most of an hour.
Writes OUT/table.md and OUT/table.json; prints the table, the machine and its load.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

RUNTIMES = {
    "fp32": "transformers, vLLM, ONNX (lmtune export --format onnx)",
    "bf16": "transformers, vLLM",
    "int8": "transformers + torchao",
    "int4": "transformers + bitsandbytes",
    "gptq": "vLLM (GPU kernels), transformers + compressed-tensors",
    "awq": "vLLM (GPU kernels), transformers + compressed-tensors",
    "gguf": "llama.cpp, Ollama, LM Studio",
}
GGUF_QUANTS = ("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")


def row(
    name: str, m: dict[str, Any], runtime: str, agreement: Any = None, versus: str = ""
) -> dict[str, Any]:
    return {
        "format": name,
        "size_mib": m["size_bytes"] / 2**20,
        "perplexity": m.get("perplexity"),
        "agreement": agreement,
        "versus": versus,
        "tokens_per_second": m.get("tokens_per_second"),
        "runtime": runtime,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run directory (its validation records are the held-out set)")
    parser.add_argument("--out", default="runs/quant-table")
    parser.add_argument("--group-size", type=int, default=128, help="GPTQ/AWQ group size (SmolLM2-135M: 64)")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--only", nargs="*", help="a subset of rows, e.g. fp32 int8 gguf:q4_k_m")
    args = parser.parse_args()

    import torch

    from lmtune.export import quality
    from lmtune.export.merge import plain_model
    from lmtune.export.records import export_records

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_start, started = os.getloadavg(), time.time()
    want = set(
        args.only or ["fp32", "bf16", "int8", "int4", "gptq", "awq", *(f"gguf:{q}" for q in GGUF_QUANTS)]
    )
    records = export_records(args.run, data=None, calib=None, need_calib=True)
    model, tokenizer, name = plain_model(args.run, say=print)
    items = records.held_out
    print(f"held-out: {records.held_out_source}; calibration: {records.calib_source}")
    rows: list[dict[str, Any]] = []

    fp32_dir = out / "fp32"
    shutil.rmtree(fp32_dir, ignore_errors=True)
    model.save_pretrained(fp32_dir)
    fp32 = quality.measure_hf(model, tokenizer, fp32_dir, items)
    ref_greedy = fp32["greedy"]
    rows.append(row("fp32", fp32, RUNTIMES["fp32"], 1.0, "itself"))
    print(rows[-1])

    def versus_fp32(m: dict[str, Any]) -> float | None:
        return quality.agreement(ref_greedy, m["greedy"])["greedy_prefix_agreement"]

    if "bf16" in want:
        bf16_dir = out / "bf16"
        shutil.rmtree(bf16_dir, ignore_errors=True)
        half = copy.deepcopy(model).to(torch.bfloat16)
        half.save_pretrained(bf16_dir)
        m = quality.measure_hf(half, tokenizer, bf16_dir, items)
        rows.append(row("bf16", m, RUNTIMES["bf16"], versus_fp32(m), "fp32"))
        print(rows[-1])
        del half

    for fmt in ("int8", "int4"):
        if fmt not in want:
            continue
        from lmtune.export.quantize import export_quantized

        shutil.rmtree(out / fmt, ignore_errors=True)
        r = export_quantized(model, tokenizer, out / fmt, fmt=fmt, items=items, force=True, say=print)
        rows.append(row(fmt, r["quantized"], RUNTIMES[fmt], r["greedy_prefix_agreement"], "fp32"))
        print(rows[-1])

    for fmt in ("gptq", "awq"):
        if fmt not in want:
            continue
        saved = out / fmt / "quantization.json"
        if saved.exists():
            r = json.loads(saved.read_text())
            print(f"{fmt}: read {saved}")
        else:
            from lmtune.export.compressed import export_compressed, write_report

            shutil.rmtree(out / fmt, ignore_errors=True)
            r = export_compressed(
                model, tokenizer, out / fmt, fmt=fmt, records=records, group_size=args.group_size,
                calib_samples=args.calib_samples, say=print,
            )  # fmt: skip
            quality.perplexity_gate(r, quality.DEFAULT_MAX_PPL_INCREASE, force=True, what=fmt)
            write_report(out / fmt, r)
        label = (
            f"{fmt.upper()} {r['scheme'].split(':')[0]} g{r['scheme'].split('groups of ')[1].split(',')[0]}"
        )
        rows.append(row(label, r["quantized"], RUNTIMES[fmt], r["greedy_prefix_agreement"], "fp32"))
        print(rows[-1])

    from lmtune.export.gguf import export_gguf
    from lmtune.export.gguf.quality import measure_file, measure_gguf

    for quant in GGUF_QUANTS:
        if f"gguf:{quant}" not in want:
            continue
        path = out / f"model.{quant}.gguf"
        export_gguf(model, tokenizer, path, quant=quant, name=name, notes=[])
        if quant == "f16":
            m = measure_file(path, tokenizer, items)
            rows.append(row("GGUF f16", m, RUNTIMES["gguf"], versus_fp32(m), "fp32 (transformers)"))
        else:
            r = measure_gguf(path, model, tokenizer, quant=quant, items=items, name=name)
            rows.append(
                row(f"GGUF {quant}", r["quantized"], RUNTIMES["gguf"], r["greedy_prefix_agreement"], "f16")
            )
        print(rows[-1])

    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
        f"{torch.get_num_threads()}, load average {load_start[0]:.1f} at start and {os.getloadavg()[0]:.1f} at end "
        f"(shared machine), {time.strftime('%Y-%m-%d', time.gmtime())}, {time.time() - started:.0f} s"
    )
    saved = out / "table.json"
    runs = [{"machine": machine, "rows": [r["format"] for r in rows]}]
    if args.only and saved.exists():  # a partial run updates its rows of the last full table
        before = json.loads(saved.read_text())
        mine = {r["format"]: r for r in rows}
        rows = [mine.pop(r["format"], r) for r in before["rows"]] + list(mine.values())
        runs = before["runs"] + runs
    machine = "; ".join(f"{', '.join(r['rows'])}: {r['machine']}" for r in runs) if len(runs) > 1 else machine
    table = markdown(rows, records.held_out_source, machine)
    (out / "table.md").write_text(table, encoding="utf-8")
    saved.write_text(json.dumps({"runs": runs, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(table)


def markdown(rows: list[dict[str, Any]], held_out: str, machine: str) -> str:
    def f(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    lines = [
        "| format | size (MiB) | perplexity | greedy agreement (vs) | tokens/s | loads in |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        agree = "-" if r["agreement"] is None else f"{100 * r['agreement']:.0f}% ({r['versus']})"
        lines.append(
            f"| {r['format']} | {f(r['size_mib'], '.1f')} | {f(r['perplexity'], '.4f')} | {agree} | "
            f"{f(r['tokens_per_second'], '.1f')} | {r['runtime']} |"
        )
    lines += ["", f"Perplexity: {held_out}, answer tokens. Machine: {machine}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
