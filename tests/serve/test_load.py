"""Load on a real `lmtune serve` process (loopback only), driven by the `openai` client: many chat
requests at once, half of them streamed. Every one must succeed with a well-formed answer equal to the
greedy reply `generate_replies` gives in this process, and the server's memory (RSS, read from /proc)
must not grow from one round to the next. The server is started without --host: it must listen on
127.0.0.1 only.

The CI version sends 2 rounds of 40 requests, 8 at a time; the `slow` one 2 rounds of 500, 32 at a time
(`pytest -m slow tests/serve/test_load.py -s` prints the figures docs/reliability.md records)."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import psutil
import pytest
from openai import OpenAI

from lmtune.infer.generate import GenerationOptions, generate_replies

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOPICS = ["the sea", "a robot", "autumn", "a lost key", "the moon", "coffee", "a train", "a small dog"]
RSS_SLACK = 32 * 2**20  # allowed growth from round 1 to round 2: allocator noise, not a leak per request


def jobs(n: int) -> list[tuple[list[dict], int, bool]]:
    """(messages, max_tokens, stream) for n requests: 8 prompts of different lengths, 3 budgets, every
    other one streamed."""
    out = []
    for i in range(n):
        extra = " Keep it short." * (i % 3)
        messages = [{"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]}.{extra}"}]
        out.append((messages, (8, 12, 16)[i % 3], i % 2 == 1))
    return out


def rss(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) * 1024  # type: ignore[union-attr]


def start_server(model_dir: Path, log: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("LMTUNE_API_KEY", None)
    args = ["serve", str(model_dir), "--name", "tiny", "--port", "0", "--max-batch", str(max_batch)]
    args += ["--max-queue", "1000", "--max-tokens-limit", "64"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmtune.cli.app", *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited early:\n{log.read_text()}"
        if found := re.search(r"at (http://[^ ]+/v1)", log.read_text()):
            try:
                if httpx.get(f"{found.group(1)}/models", timeout=2).status_code == 200:
                    return proc, found.group(1)
            except httpx.TransportError:
                pass
        time.sleep(0.25)
    proc.kill()
    raise AssertionError(f"the server was not ready:\n{log.read_text()}")


def one_request(base_url: str, job: tuple[list[dict], int, bool]) -> tuple[str, float, str | None, int]:
    """(reply text, latency s, finish_reason, completion tokens), checking the answer's shape."""
    messages, max_tokens, stream = job
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    started = time.monotonic()
    if not stream:
        reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=max_tokens)
        assert reply.object == "chat.completion" and reply.model == "tiny" and len(reply.choices) == 1
        assert reply.choices[0].message.role == "assistant"
        text, finish, used = reply.choices[0].message.content, reply.choices[0].finish_reason, reply.usage
    else:
        chunks = list(
            client.chat.completions.create(
                model="tiny",
                messages=messages,
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[0].choices[0].delta.role == "assistant"
        assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish, used = chunks[-2].choices[0].finish_reason, chunks[-1].usage
    assert isinstance(text, str) and finish in ("stop", "length")
    assert used is not None and 0 < used.completion_tokens <= max_tokens and used.prompt_tokens > 0
    return text, time.monotonic() - started, finish, used.completion_tokens


def run_load(model_dir: Path, model_and_tokenizer, log: Path, *, requests: int, concurrency: int) -> None:
    model, tokenizer = model_and_tokenizer
    work = jobs(requests)
    distinct = {(str(m), n): (m, n) for m, n, _ in work}
    expected = {
        key: generate_replies(model, tokenizer, [m], GenerationOptions(max_new_tokens=n))[0]
        for key, (m, n) in distinct.items()
    }
    proc, base_url = start_server(model_dir, log, max_batch=concurrency)
    try:
        assert base_url.startswith("http://127.0.0.1:")  # the default host
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections() if c.status == "LISTEN"]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
        one_request(base_url, work[0])  # warm-up: the first request's lazy imports and allocations
        sizes, failures = [], 0
        for round_ in (1, 2):
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                results = list(pool.map(lambda job: one_request(base_url, job), work))
            wall = time.monotonic() - started
            wrong = [
                i
                for i, (job, r) in enumerate(zip(work, results, strict=True))
                if r[0] != expected[(str(job[0]), job[1])]
            ]
            failures += len(wrong)
            latencies = sorted(r[1] for r in results)
            p50 = statistics.median(latencies)
            p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
            sizes.append(rss(proc.pid))
            tokens = sum(r[3] for r in results)
            print(
                f"\nround {round_}: {requests} requests, {concurrency} concurrent, half streamed: "
                f"{requests - len(wrong)} correct, {len(wrong)} wrong, {wall:.1f} s, "
                f"{requests / wall:.2f} req/s, {tokens / wall:.1f} gen tok/s, p50 {p50:.2f} s, "
                f"p99 {p99:.2f} s, server RSS {sizes[-1] / 2**20:.1f} MiB"
            )
            assert not wrong, f"round {round_}: requests {wrong[:10]} got another answer than alone"
        growth = sizes[1] - sizes[0]
        print(
            f"RSS growth from round 1 to round 2: {growth / 2**20:+.1f} MiB (allowed {RSS_SLACK / 2**20:.0f})"
        )
        assert growth <= RSS_SLACK, f"the server's memory grew by {growth / 2**20:.1f} MiB in round 2"
        assert proc.poll() is None and failures == 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_load_small(tiny_model_dir, tiny_model_and_tokenizer, tmp_path):
    run_load(tiny_model_dir, tiny_model_and_tokenizer, tmp_path / "server.log", requests=40, concurrency=8)


@pytest.mark.slow
def test_load_500_requests_32_concurrent(tiny_model_dir, tiny_model_and_tokenizer, tmp_path):
    run_load(tiny_model_dir, tiny_model_and_tokenizer, tmp_path / "server.log", requests=500, concurrency=32)
