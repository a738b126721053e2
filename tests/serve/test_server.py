"""A real `lmtune serve` process on loopback, driven by the official `openai` client: three targets at
once (two model folders and a LoRA run trained here), replies equal to `generate_replies` in this
process, streaming, completions, concurrent clients, the API key. And, with uvicorn in a thread of this
process so the scheduler can be watched: a client that disconnects mid-stream frees its batch row,
and a full queue is a 429 the openai client raises as RateLimitError."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
from openai import OpenAI
from rich.console import Console
from tests.serve.helpers import raw_continuation

from lmtune.config.loader import validate_config
from lmtune.infer.generate import GenerationOptions, generate_replies
from lmtune.run.load import load_target
from lmtune.serve.app import create_app
from lmtune.serve.engine import ModelSlot
from lmtune.serve.server import bind
from lmtune.train.runner import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = "test-key-123"
HELLO = [{"role": "user", "content": "hello"}]
SUM = [{"role": "user", "content": "What is 3 plus 5?"}]


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, sums_file, tmp_path_factory) -> Path:
    """A tiny LoRA run, trained here: serving a run directory right after training."""
    cfg = validate_config(
        {
            "model": {"name": str(tiny_model_dir)},
            "data": {"path": str(sums_file), "val_size": 0},
            "method": {"name": "lora", "r": 8},
            "train": {"max_steps": 20, "lr": 1e-2, "batch_size": 4, "log_steps": 10, "bf16": False},
            "output": {"dir": str(tmp_path_factory.mktemp("serve_run") / "sums-lora")},
        }
    )
    return train(cfg, console=Console(quiet=True)).run_dir


@dataclass
class Server:
    base_url: str
    log: Path
    llama: str
    qwen: str
    run: str

    def client(self, api_key: str = KEY) -> OpenAI:
        return OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tiny_qwen2_dir, lora_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("LMTUNE_API_KEY", None)
    targets = [str(tiny_model_dir), str(tiny_qwen2_dir), str(lora_run)]
    args = ["serve", *targets, "--port", "0", "--api-key", KEY, "--max-tokens-limit", "256"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmtune.cli.app", *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        base_url = wait_until_ready(proc, log)
        yield Server(base_url, log, Path(tiny_model_dir).name, Path(tiny_qwen2_dir).name, lora_run.name)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until_ready(proc: subprocess.Popen, log: Path, timeout: float = 150) -> str:
    """The base URL from the startup banner (port 0 = a free port), once /v1/models answers."""
    deadline = time.monotonic() + timeout
    base_url = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited early:\n{log.read_text()}"
        if base_url is None and (found := re.search(r"at (http://127\.0\.0\.1:\d+/v1)", log.read_text())):
            base_url = found.group(1)
        if base_url is not None:
            try:
                ready = httpx.get(f"{base_url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=2)
                if ready.status_code == 200:
                    return base_url
            except httpx.TransportError:
                pass
        time.sleep(0.25)
    raise AssertionError(f"the server was not ready in {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def qwen(tiny_qwen2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir), AutoTokenizer.from_pretrained(tiny_qwen2_dir)


def greedy(model_and_tokenizer, messages, max_tokens: int) -> str:
    model, tokenizer = model_and_tokenizer
    return generate_replies(model, tokenizer, [messages], GenerationOptions(max_new_tokens=max_tokens))[0]


def test_startup_banner_and_model_list(server):
    text = server.log.read_text()
    for model_id in (server.llama, server.qwen, server.run):
        assert model_id in text
    assert f"curl {server.base_url}/chat/completions" in text and "Authorization: Bearer" in text
    assert f'OpenAI(base_url="{server.base_url}"' in text and KEY not in text  # the key is never printed
    assert [m.id for m in server.client().models.list()] == [server.llama, server.qwen, server.run]


def test_chat_streamed_and_not_equals_generate_replies(server, tiny_model_and_tokenizer):
    client = server.client()
    expected = greedy(tiny_model_and_tokenizer, HELLO, 16)
    reply = client.chat.completions.create(model=server.llama, messages=HELLO, max_tokens=16)
    assert reply.choices[0].message.content == expected and expected
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 16
    chunks = list(
        client.chat.completions.create(
            model=server.llama,
            messages=HELLO,
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage == reply.usage


def test_completions(server, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    prompt = "The capital of France is"
    expected = raw_continuation(model, tokenizer, prompt, 10)
    done = server.client().completions.create(model=server.llama, prompt=prompt, max_tokens=10)
    assert done.choices[0].text == expected and expected.strip()
    pieces = server.client().completions.create(model=server.llama, prompt=prompt, max_tokens=10, stream=True)
    assert "".join(p.choices[0].text for p in pieces) == expected


def test_two_models_chosen_by_the_model_field(server, tiny_model_and_tokenizer, qwen):
    client = server.client()
    llama = client.chat.completions.create(model=server.llama, messages=HELLO, max_tokens=12)
    other = client.chat.completions.create(model=server.qwen, messages=HELLO, max_tokens=12)
    assert llama.model == server.llama and other.model == server.qwen
    assert llama.choices[0].message.content == greedy(tiny_model_and_tokenizer, HELLO, 12)
    assert other.choices[0].message.content == greedy(qwen, HELLO, 12)
    assert llama.choices[0].message.content != other.choices[0].message.content
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=2)


def test_concurrent_requests_each_get_their_answer_alone(server, tiny_model_and_tokenizer, qwen):
    prompts = [[{"role": "user", "content": f"Tell me about the number {i}."}] for i in range(3)]
    jobs = [
        (name, p, stream) for name in (server.llama, server.qwen) for p in prompts for stream in (False, True)
    ]
    local = {server.llama: tiny_model_and_tokenizer, server.qwen: qwen}
    expected = [greedy(local[name], p, 12) for name, p, _ in jobs]
    assert len(set(expected)) == len(prompts) * 2  # every prompt and model answers differently

    def ask(job) -> str:
        name, messages, stream = job
        client = server.client()
        out = client.chat.completions.create(model=name, messages=messages, max_tokens=12, stream=stream)
        if stream:
            return "".join(c.choices[0].delta.content or "" for c in out if c.choices)
        return out.choices[0].message.content

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        assert list(pool.map(ask, jobs)) == expected


def test_api_key_is_enforced(server):
    client = server.client(api_key="wrong")
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    with pytest.raises(openai.AuthenticationError, match="API key"):
        client.chat.completions.create(model=server.llama, messages=HELLO, max_tokens=2)
    anonymous = httpx.post(
        f"{server.base_url}/chat/completions", json={"model": server.llama, "messages": HELLO}
    )
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"


def test_a_run_directory_right_after_training(server, lora_run):
    loaded = load_target(str(lora_run), quiet=True)
    expected = generate_replies(loaded.model, loaded.tokenizer, [SUM], GenerationOptions(max_new_tokens=20))[
        0
    ]
    reply = server.client().chat.completions.create(model=server.run, messages=SUM, max_tokens=20)
    assert reply.choices[0].message.content == expected and expected
    base = server.client().chat.completions.create(model=server.llama, messages=SUM, max_tokens=20)
    assert base.choices[0].message.content != expected  # the adapter is applied


def test_client_disconnect_mid_stream_frees_the_model(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    slot = ModelSlot("tiny", model, tokenizer, max_batch=1, max_queue=0)
    forwards = [0]
    hold_after = [10**9]  # forwards past this number wait for the gate: the streamed row cannot finish
    gate = threading.Event()  # (a row racing ahead to the context limit would free the slot and the test)

    def count(*_):
        forwards[0] += 1
        if forwards[0] > hold_after[0]:
            gate.wait(20)

    hook = model.register_forward_pre_hook(count)
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app([slot], max_tokens_limit=2000), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 2000, "stream": True}
        full = OpenAI(base_url=url, api_key="unused", max_retries=0)
        full.completions.create(model="tiny", prompt="Hi", max_tokens=1)  # the client's lazy imports done
        hold_after[0] = forwards[0] + 2  # prefill and one decode step run; the next forward waits
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", f"{url}/completions", json=body) as response:
                assert response.status_code == 200
                next(line for line in response.iter_lines() if line.startswith("data: "))
                assert slot.scheduler.active() == 1  # generating (held at its third forward)
                try:
                    with pytest.raises(openai.RateLimitError) as busy:  # max_batch 1, max_queue 0
                        full.completions.create(model="tiny", prompt="Hi", max_tokens=2)
                finally:
                    gate.set()
                assert busy.value.code == "queue_full" and busy.value.response.headers["retry-after"] == "1"
            # leaving the block closes the connection with ~2000 tokens still to go
            deadline = time.monotonic() + 10
            while slot.scheduler.active() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert slot.scheduler.active() == 0
            stopped_at = forwards[0]
            time.sleep(0.3)
            assert forwards[0] == stopped_at < 1000  # generation stopped, well before max_tokens
            after = http.post(f"{url}/completions", json={**body, "stream": False, "max_tokens": 3})
            assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 3
    finally:
        hook.remove()
        server.should_exit = True
        thread.join(timeout=15)
