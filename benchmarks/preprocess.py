"""Time and peak memory of `data inspect` and of tokenising into the memory-mapped store, at 10k,
100k and 1M Alpaca records: cost should grow linearly with the records and memory stay flat.

    python benchmarks/preprocess.py                          # 10k and 100k
    python benchmarks/preprocess.py --sizes 10000 100000 1000000 --old 10000 100000

The records are the 2,000 of ../shared/data/alpaca_en_stanford/alpaca_small.json (read at run
time, never copied into the project) repeated to the size, written as JSON lines to a scratch
folder (--work, default a temporary folder). Each measurement runs in a fresh Python process;
"peak memory" is the largest sum, over that process and all its children (the tokenising workers),
of their proportional set size (PSS: a page shared by n processes counts 1/n to each, so forked
workers sharing the parent's pages are not counted twice), sampled every 100 ms. It is given twice:
"PSS" counts everything resident, including pages of the memory-mapped Arrow files and of the
input file that the process has touched (clean page cache, which the kernel drops when memory is
short); "anon" counts only anonymous memory (Pss_Anon in /proc/PID/smaps_rollup: Python objects,
buffers), which is what the process really needs.
Steps:

- inspect:     lmtune.datastore.inspect.inspect_file (what `lmtune data inspect` runs)
- store cold:  lmtune.datastore.store.build_or_load into an empty cache folder (streamed read,
               datasets.map with num_proc workers, Arrow files)
- store warm:  the same call again (hash the file, memory-map the store), plus one row read
- old path:    (--old sizes) load_conversations + tokenize_records, the in-memory lists used so far
- text cold/warm: (--text sizes) the pretraining token store (lmtune.datastore.text_store) of a .txt
               file with one document per line (the records' responses), then one block cut from it

"base" is a process that only imports and loads the tokenizer: the floor under every figure.
"CPU s" is the CPU time (user + system) of the measured process and every worker it waited for
(getrusage of the children): unlike wall seconds it hardly moves with other jobs on the machine,
so it is the figure to read for how cost grows with the records on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "alpaca_en_stanford" / "alpaca_small.json"

CHILD = r"""
import json, sys, time
from pathlib import Path
step, data, tok_dir, cache, max_length, num_proc = sys.argv[1:7]
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(tok_dir)
out = {}
t = time.perf_counter()
if step == "inspect":
    from lmtune.datastore.inspect import inspect_file
    r = inspect_file(data, tok, max_length=int(max_length))
    out = {"usable": r.report["usable"], "tokens": r.report["tokens"]}
elif step in ("cold", "warm"):
    from lmtune.data.sources import SourceSpec
    from lmtune.datastore.store import build_or_load
    st = build_or_load([SourceSpec(data, Path(data).name)], tok, cache_dir=cache, max_length=int(max_length),
                       train_on="all", num_proc=int(num_proc) or None)
    row = st.dataset[len(st.dataset) // 2]
    out = {"usable": len(st.dataset), "tokens": st.stats["tokens"], "hit": st.hit, "num_proc": st.meta["num_proc"]}
elif step in ("text-cold", "text-warm"):
    from lmtune.data.sources import SourceSpec
    from lmtune.datastore.blocks import TokenBlocks
    from lmtune.datastore.text_store import build_or_load_text
    st = build_or_load_text([SourceSpec(data, Path(data).name)], tok, cache_dir=cache, text_split="line")
    blocks = TokenBlocks(st, st.order, int(max_length))
    row = blocks[len(blocks) // 2]
    out = {"usable": st.meta["documents"], "tokens": st.meta["tokens"], "hit": st.hit, "num_proc": 1}
elif step == "old":
    from lmtune.data.load import load_conversations
    from lmtune.tokenize.dataset import tokenize_records
    ts = tokenize_records(load_conversations(data).records, tok, max_length=int(max_length), train_on="all")
    out = {"usable": len(ts.samples), "tokens": ts.stats()["tokens"]}
out["seconds"] = round(time.perf_counter() - t, 2)
print("RESULT " + json.dumps(out))
"""


def rollup(pid: int) -> tuple[int, int]:
    """(PSS, anonymous PSS) of one process in bytes, from /proc/PID/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0]) * 1024
    return fields["Pss"], fields.get("Pss_Anon", fields["Pss"])


def measure(args: list[str]) -> dict:
    """Run CHILD with `args`; its result plus the peak PSS and anonymous PSS (MB) of it and its children."""
    import resource

    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    ps = psutil.Process(proc.pid)
    peak = peak_anon = 0
    while proc.poll() is None:
        try:
            both = [rollup(q.pid) for q in [ps, *ps.children(recursive=True)]]
            peak = max(peak, sum(b[0] for b in both))
            peak_anon = max(peak_anon, sum(b[1] for b in both))
        except (psutil.Error, OSError):
            pass
        time.sleep(0.1)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = proc.stdout.read() if proc.stdout else ""
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"{args[0]} failed (exit {proc.returncode}): {out[-2000:]}")
    peaks = {"peak_mb": round(peak / 2**20), "anon_mb": round(peak_anon / 2**20), "cpu_s": round(cpu, 1)}
    return {**json.loads(line[7:]), **peaks}


def write_records(n: int, path: Path) -> None:
    rows = json.loads(DATA.read_text(encoding="utf-8"))
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps(rows[i % len(rows)], ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument(
        "--old", type=int, nargs="*", default=[10_000], help="sizes to also run the old path on"
    )
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--num-proc", type=int, default=0, help="0: the auto rule")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--text", type=int, nargs="*", default=[], help="line counts for the text store")
    parser.add_argument(
        "--steps", nargs="+", default=["inspect", "cold", "warm"], help="of inspect, cold, warm (old: --old)"
    )
    a = parser.parse_args(argv)
    work = a.work or Path(tempfile.mkdtemp(prefix="lmtune-preprocess-"))
    work.mkdir(parents=True, exist_ok=True)
    from lmtune.models.load import load_tokenizer
    from lmtune.models.resolve import resolve_model_ref

    tok_dir = work / "tokenizer"
    if not tok_dir.is_dir():
        load_tokenizer(resolve_model_ref("smollm2-135m-instruct")).save_pretrained(tok_dir)
    common = [str(tok_dir)]
    base = measure(["none", str(DATA), *common, str(work / "none"), str(a.max_length), "0"])
    print(
        f"base (imports + tokenizer): peak {base['peak_mb']} MB, anon {base['anon_mb']} MB, CPU {base['cpu_s']} s",
        flush=True,
    )
    print("| records | step | seconds | CPU s | peak PSS (MB) | peak anon (MB) | usable | tokens |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in a.sizes:
        data = work / f"alpaca_{n}.jsonl"
        if not data.is_file():
            write_records(n, data)
        cache = work / f"cache_{n}"
        shutil.rmtree(cache, ignore_errors=True)  # "cold" must be cold
        steps = list(a.steps) + (["old"] if n in (a.old or []) else [])
        for step in steps:
            r = measure([step, str(data), *common, str(cache), str(a.max_length), str(a.num_proc)])
            extra = f" (num_proc {r['num_proc']}, {'hit' if r['hit'] else 'built'})" if "hit" in r else ""
            print(
                f"| {n:,} | {step}{extra} | {r['seconds']} | {r['cpu_s']} | {r['peak_mb']} | {r['anon_mb']} | {r['usable']:,} "
                f"| {r['tokens']:,} |",
                flush=True,
            )
    for n in a.text:
        data = work / f"text_{n}.txt"
        if not data.is_file():
            rows = json.loads(DATA.read_text(encoding="utf-8"))
            with data.open("w", encoding="utf-8") as fh:
                for i in range(n):
                    fh.write(" ".join(rows[i % len(rows)]["output"].split()) + "\n")
        cache = work / f"text_cache_{n}"
        shutil.rmtree(cache, ignore_errors=True)
        for step in ("text-cold", "text-warm"):
            r = measure([step, str(data), *common, str(cache), str(a.max_length), "1"])
            print(
                f"| {n:,} lines | {step} ({'hit' if r['hit'] else 'built'}) | {r['seconds']} | {r['cpu_s']} "
                f"| {r['peak_mb']} "
                f"| {r['anon_mb']} | {r['usable']:,} | {r['tokens']:,} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
