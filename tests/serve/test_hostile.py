"""Hostile clients against a real uvicorn server (in a thread of this process, with `lmtune serve`'s own
uvicorn settings, so the scheduler can be watched): every bad request is answered in OpenAI's error
shape with the right status, slow clients are cut off while others are served, and clients that
leave mid-stream free their batch rows."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2 as httpx
import openai
import pytest
from openai import OpenAI

from lmtune.serve.app import create_app
from lmtune.serve.engine import ModelSlot
from lmtune.serve.server import bind, uvicorn_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = "hostile-test-key"
HELLO = [{"role": "user", "content": "hello"}]
READ_TIMEOUT = 1.5


@dataclass
class Live:
    url: str  # .../v1
    port: int
    slot: ModelSlot

    def client(self, key: str = KEY) -> OpenAI:
        return OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=60)

    def post(self, path: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {KEY}", **kwargs.pop("headers", {})}
        return httpx.post(f"{self.url}{path}", headers=headers, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def live(tiny_model_and_tokenizer) -> Iterator[Live]:
    import uvicorn

    model, tokenizer = tiny_model_and_tokenizer
    slot = ModelSlot("tiny", model, tokenizer, max_batch=8, max_queue=16)
    app = create_app(
        [slot], api_key=KEY, max_tokens_limit=512, max_request_bytes=200_000, read_timeout=READ_TIMEOUT
    )
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, read_timeout=READ_TIMEOUT, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield Live(f"http://127.0.0.1:{port}/v1", port, slot)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        slot.scheduler.close()


def openai_error(response: httpx.Response, status: int) -> dict:
    """The error object, after checking the status and OpenAI's exact error shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def chat_body(**fields) -> dict:
    return {"model": "tiny", "messages": HELLO, "max_tokens": 4, **fields}


def test_hostile_requests_get_openai_errors(live):
    path = "/chat/completions"
    # missing and wrong API key: 401, also through the openai client
    nokey = httpx.post(f"{live.url}{path}", json=chat_body(), timeout=30)
    assert openai_error(nokey, 401)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        live.client(key="wrong").chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)
    # oversized body: 413, by Content-Length and counted when sent chunked (no length up front)
    big = chat_body(messages=[{"role": "user", "content": "x" * 300_000}])
    assert openai_error(live.post(path, json=big), 413)["code"] == "request_too_large"
    chunks = (json.dumps(big).encode()[i : i + 50_000] for i in range(0, 400_000, 50_000))
    chunked = live.post(path, content=chunks, headers={"Content-Type": "application/json"})
    assert openai_error(chunked, 413)["code"] == "request_too_large"
    # huge max_tokens: 400 naming it and the limit (not clamped: the client asked for something else)
    huge = openai_error(live.post(path, json=chat_body(max_tokens=10**12)), 400)
    assert huge["param"] == "max_tokens" and "limit of 512" in huge["message"]
    # invalid JSON, and JSON that is not an object
    bad = live.post(
        path, content=b'{"model": "tiny", "messages": [', headers={"Content-Type": "application/json"}
    )
    assert "not valid JSON" in openai_error(bad, 400)["message"]
    assert openai_error(live.post(path, json=[1, 2]), 400)
    # unknown model: 404 naming the served ones
    with pytest.raises(openai.NotFoundError, match="serves 'tiny'"):
        live.client().chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=2)
    # a prompt longer than the context window (2048 tokens): 400 with the counts
    long_prompt = [{"role": "user", "content": "hello " * 3000}]
    context = openai_error(live.post(path, json=chat_body(messages=long_prompt)), 400)
    assert context["code"] == "context_length_exceeded" and "context is 2048 tokens" in context["message"]
    # thousands of stop strings, or one huge one: 400 naming `stop`
    many = openai_error(live.post(path, json=chat_body(stop=[f"s{i}" for i in range(5000)])), 400)
    assert many["param"] == "stop" and "at most 16 stop strings" in many["message"]
    assert openai_error(live.post(path, json=chat_body(stop="z" * 1000)), 400)["param"] == "stop"
    # deeply nested JSON: a 400, not a recursion crash; nesting the parser accepts is a plain 400
    deep = b'{"model": "tiny", "messages": ' + b"[" * 90_000 + b"]" * 90_000 + b"}"
    nested = live.post(path, content=deep, headers={"Content-Type": "application/json"})
    assert "nested too deeply" in openai_error(nested, 400)["message"]
    moderate = chat_body(messages=json.loads("[" * 500 + "]" * 500))
    assert openai_error(live.post(path, json=moderate), 400)["param"].startswith("messages[0]")
    ignored = chat_body(metadata=json.loads("[" * 500 + "]" * 500))  # bookkeeping field: ignored
    assert live.post(path, json=ignored).status_code == 200
    # after all that, the server still answers normally
    reply = live.client().chat.completions.create(model="tiny", messages=HELLO, max_tokens=4)
    assert reply.usage.completion_tokens <= 4 and isinstance(reply.choices[0].message.content, str)


def _drip(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    """Send `data` one byte at a time, `every` seconds apart, until the server hangs up."""
    for byte in data:
        if stop.is_set():
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return
        time.sleep(every)


def _slow_client(port: int, data: bytes, first: bytes = b"") -> tuple[bytes, float]:
    """Open a connection, send `first` at once and drip `data`; return what the server sent before
    closing, and after how long."""
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(first)
    stop = threading.Event()
    drip = threading.Thread(target=_drip, args=(sock, data, 0.2, stop), daemon=True)
    drip.start()
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except OSError:
        pass
    finally:
        closed_after = time.monotonic() - started
        stop.set()
        sock.close()
        drip.join(timeout=5)
    return received, closed_after


def test_slow_clients_are_cut_off_and_others_served(live):
    """A client dripping its headers, one dripping its body, and one dripping a second request's
    headers on a kept-alive connection, one byte every 0.2 s (their full requests would take about a
    minute): each gets a 408 in OpenAI's shape and is disconnected after about READ_TIMEOUT seconds,
    while a normal client is served meanwhile."""
    body = json.dumps(chat_body()).encode()
    headers = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    results: dict[str, tuple[bytes, float]] = {}
    clients = {  # name: (sent at once, dripped)
        "headers": (b"", headers + body),
        "body": (headers, body),
        "kept-alive": (headers + body, headers + body),  # a quick request, then a slow one
    }

    def run(name: str) -> None:
        results[name] = _slow_client(live.port, clients[name][1], clients[name][0])

    slow = [threading.Thread(target=run, args=(name,)) for name in clients]
    for thread in slow:
        thread.start()
    time.sleep(0.3)
    served = live.client().chat.completions.create(model="tiny", messages=HELLO, max_tokens=4)
    assert served.choices[0].finish_reason in ("stop", "length")
    for thread in slow:
        thread.join(timeout=30)
    answered, _ = results["kept-alive"]
    assert answered.startswith(b"HTTP/1.1 200"), answered[:200]
    results["kept-alive"] = (answered[answered.index(b"HTTP/1.1 408") :], results["kept-alive"][1])
    for name, (received, closed_after) in results.items():
        part = "body" if name == "body" else "headers"
        head, _, payload = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), received[:200]
        error = json.loads(payload)["error"]
        assert error["code"] == "request_timeout" and f"request's {part}" in error["message"]
        assert READ_TIMEOUT * 0.9 <= closed_after < READ_TIMEOUT + 5, (name, closed_after)


def test_clients_leaving_mid_stream_free_their_rows(live):
    """Six streams with a large max_tokens, each dropped after its first chunk, while two normal
    requests run: the six rows leave the batch at once and the normal replies are unaffected."""
    expected = live.client().chat.completions.create(model="tiny", messages=HELLO, max_tokens=24)
    body = {**chat_body(max_tokens=500), "stream": True}

    def leave_early() -> None:
        auth = {"Authorization": f"Bearer {KEY}"}
        with (
            httpx.Client(timeout=30, headers=auth) as http,
            http.stream("POST", f"{live.url}/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200
            next(line for line in response.iter_lines() if line.startswith("data: "))

    leavers = [threading.Thread(target=leave_early) for _ in range(6)]
    for thread in leavers:
        thread.start()
    others = [
        live.client().chat.completions.create(model="tiny", messages=HELLO, max_tokens=24) for _ in range(2)
    ]
    for thread in leavers:
        thread.join(timeout=60)
    deadline = time.monotonic() + 10
    while live.slot.scheduler.active() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live.slot.scheduler.active() == 0
    steps = live.slot.scheduler.steps
    time.sleep(0.3)
    assert live.slot.scheduler.steps == steps  # nothing is still generating for the leavers
    for other in others:
        assert other.choices[0].message.content == expected.choices[0].message.content
