"""The server app in-process: replies equal `generate_replies` (and a raw transformers continuation for
/v1/completions), usage counts equal the tokenizer's, SSE framing, stop strings, seeds, limits, auth,
OpenAI-shaped errors, and one generation at a time per model."""

from __future__ import annotations

import threading

import pytest
from starlette.testclient import TestClient
from tests.serve.helpers import parse_sse, raw_continuation

from lmtune.infer.generate import (
    GenerationOptions,
    cut_at_stop,
    generate_replies,
    generate_with_counts,
    render_prompt,
)
from lmtune.serve.app import create_app
from lmtune.serve.engine import ModelSlot, Outcome
from lmtune.serve.server import load_slots

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONVERSATIONS = [
    [{"role": "user", "content": "hello"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What is the capital of France?"},
    ],
]


@pytest.fixture(scope="module")
def slot(tiny_model_dir) -> ModelSlot:
    return load_slots([str(tiny_model_dir)], ["tiny"])[0]


@pytest.fixture(scope="module")
def client(slot) -> TestClient:
    return TestClient(create_app([slot], max_tokens_limit=64))


def chat(client, messages, **fields):
    return client.post("/v1/chat/completions", json={"model": "tiny", "messages": messages, **fields})


def stream(client, path, body) -> list:
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return parse_sse(response.read().decode())


def prompt_tokens(tokenizer, messages) -> int:
    return len(tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])


def assert_openai_error(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and body["error"]["param"] == param
    return body["error"]


def test_models_list(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"]) for m in body["data"]] == [("tiny", "model")]
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    assert_openai_error(client.get("/v1/models/other"), 404, "model")


@pytest.mark.parametrize("max_tokens", [6, 40])
def test_chat_reply_and_usage_equal_generate_with_counts(client, slot, max_tokens):
    options = GenerationOptions(max_new_tokens=max_tokens)
    expected = generate_with_counts(slot.model, slot.tokenizer, CONVERSATIONS, options)
    replies = []
    for messages, (text, count) in zip(CONVERSATIONS, expected):
        body = chat(client, messages, max_tokens=max_tokens).json()
        (choice,) = body["choices"]
        assert body["object"] == "chat.completion" and body["model"] == "tiny"
        assert body["id"].startswith("chatcmpl-")
        assert choice["message"] == {"role": "assistant", "content": text}
        assert choice["finish_reason"] == ("length" if count == max_tokens else "stop")
        n_prompt = prompt_tokens(slot.tokenizer, messages)
        assert body["usage"] == {
            "prompt_tokens": n_prompt,
            "completion_tokens": count,
            "total_tokens": n_prompt + count,
        }
        replies.append(text)
    assert all(replies) and len(set(replies)) == len(replies)  # real, prompt-dependent replies


def test_chat_stream_chunks_join_to_the_reply(client, slot):
    messages = CONVERSATIONS[0]
    whole = chat(client, messages, max_tokens=20).json()
    events = stream(client, "/v1/chat/completions", {"model": "tiny", "messages": messages, "max_tokens": 20})
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events)
    assert all("usage" not in e for e in events)  # only with stream_options.include_usage
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert all(set(d) == {"content"} for d in deltas[1:-1]) and len(deltas) > 3  # streamed in pieces
    assert deltas[-1] == {} and events[-1]["choices"][0]["finish_reason"] == "length"
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-1])
    assert "".join(d["content"] for d in deltas[1:-1]) == whole["choices"][0]["message"]["content"]

    with_usage = stream(
        client,
        "/v1/chat/completions",
        {"model": "tiny", "messages": messages, "max_tokens": 20, "stream_options": {"include_usage": True}},
    )
    assert with_usage[-1]["choices"] == [] and with_usage[-1]["usage"] == whole["usage"]
    assert all(e["usage"] is None for e in with_usage[:-1])


def test_completions_continue_raw_text_without_the_template(client, slot):
    prompt = "The capital of France is"
    expected = raw_continuation(slot.model, slot.tokenizer, prompt, 12)
    body = client.post("/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 12}).json()
    (choice,) = body["choices"]
    assert body["object"] == "text_completion" and choice["text"] == expected and expected.strip()
    assert choice["finish_reason"] == "length"
    n_prompt = len(slot.tokenizer(prompt)["input_ids"])
    assert body["usage"] == {
        "prompt_tokens": n_prompt,
        "completion_tokens": 12,
        "total_tokens": n_prompt + 12,
    }
    listed = client.post("/v1/completions", json={"model": "tiny", "prompt": [prompt], "max_tokens": 12})
    assert listed.json()["choices"][0]["text"] == expected

    events = stream(
        client,
        "/v1/completions",
        {"model": "tiny", "prompt": prompt, "max_tokens": 12, "stream_options": {"include_usage": True}},
    )
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == expected
    assert events[-2]["choices"][0]["finish_reason"] == "length" and events[-1]["usage"] == body["usage"]


def test_default_max_tokens(slot):
    """Omitted max_tokens: chat may use the server's limit, completions OpenAI's 16."""
    client = TestClient(create_app([slot], max_tokens_limit=7))
    assert chat(client, CONVERSATIONS[1]).json()["usage"]["completion_tokens"] == 7
    done = client.post("/v1/completions", json={"model": "tiny", "prompt": "Once upon a time"}).json()
    assert done["usage"]["completion_tokens"] == 7  # 16, capped by the limit
    wide = TestClient(create_app([slot], max_tokens_limit=64))
    done = wide.post("/v1/completions", json={"model": "tiny", "prompt": "Once upon a time"}).json()
    assert done["usage"]["completion_tokens"] == 16


def test_stop_strings_cut_the_reply_and_end_it(client, slot):
    messages = CONVERSATIONS[2]
    full = chat(client, messages, max_tokens=30).json()["choices"][0]["message"]["content"]
    word = full.split()[len(full.split()) // 2]  # a word from the middle of the greedy reply
    for stop in (word, [word, "zzz-never"]):
        options = GenerationOptions(max_new_tokens=30, stop=[stop] if isinstance(stop, str) else stop)
        expected = generate_replies(slot.model, slot.tokenizer, [messages], options)[0]
        assert expected == cut_at_stop(full, [word]).strip() and len(expected) < len(full)
        body = chat(client, messages, max_tokens=30, stop=stop).json()
        assert body["choices"][0]["message"]["content"] == expected
        assert body["choices"][0]["finish_reason"] == "stop"
        events = stream(
            client,
            "/v1/chat/completions",
            {"model": "tiny", "messages": messages, "max_tokens": 30, "stop": stop},
        )
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == expected
        assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_seeded_sampling_is_reproducible(client, slot):
    messages = CONVERSATIONS[0]
    fields = {"max_tokens": 12, "temperature": 1.0, "top_p": 0.9}
    first = chat(client, messages, seed=7, **fields).json()["choices"][0]["message"]["content"]
    assert chat(client, messages, seed=7, **fields).json()["choices"][0]["message"]["content"] == first
    options = GenerationOptions(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    assert generate_replies(slot.model, slot.tokenizer, [messages], options)[0] == first
    greedy = chat(client, messages, max_tokens=12).json()["choices"][0]["message"]["content"]
    others = {
        chat(client, messages, seed=s, **fields).json()["choices"][0]["message"]["content"] for s in (1, 2)
    }
    assert first != greedy and len(others | {first}) > 1  # sampling really samples


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "tiny"}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        ({"model": "tiny", "messages": []}, 400, "messages"),
        ({"model": "tiny", "messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
        ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
            400,
            "temperature",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
            400,
            "temperature",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            400,
            "max_tokens",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 65},
            400,
            "max_tokens",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 99},
            400,
            "max_completion_tokens",
        ),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
        (
            {
                "model": "tiny",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function"}],
            },
            400,
            "tools",
        ),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400, "stream"),
        ({"model": "tiny", "messages": [{"role": "assistant", "content": "x"}]}, 400, "messages"),
        ({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
    ],
)
def test_bad_chat_requests_get_openai_errors(client, body, status, param):
    assert_openai_error(client.post("/v1/chat/completions", json=body), status, param)


def test_other_bad_requests_get_openai_errors(client):
    bad_json = client.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in assert_openai_error(bad_json, 400)["message"]
    not_json = client.post("/v1/chat/completions", content=b'{"model": "tiny"}')  # no content type
    assert "Content-Type: application/json" in assert_openai_error(not_json, 400)["message"]
    assert_openai_error(client.post("/v1/completions", json={"model": "tiny", "prompt": ""}), 400, "prompt")
    assert_openai_error(
        client.post("/v1/completions", json={"model": "tiny", "prompt": ["a", "b"]}), 400, "prompt"
    )
    assert_openai_error(
        client.post("/v1/completions", json={"model": "tiny", "prompt": "a", "echo": True}), 400, "echo"
    )
    assert_openai_error(
        client.post("/v1/completions", json={"model": "tiny", "prompt": [1, 2]}), 400, "prompt[0]"
    )
    assert_openai_error(client.get("/v2/anything"), 404)
    assert_openai_error(client.get("/v1/chat/completions"), 405)
    # "off" values of unsupported parameters, and fields clients send for bookkeeping, are accepted
    ok = chat(
        client,
        CONVERSATIONS[0],
        max_tokens=2,
        n=1,
        logprobs=False,
        presence_penalty=0,
        user="me",
        store=False,
    )
    assert ok.status_code == 200
    # content as a list of text parts is the joined text; other part types are refused
    parts = [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]
    joined = chat(client, [{"role": "user", "content": parts}], max_tokens=5).json()["choices"][0]["message"]
    assert joined == chat(client, CONVERSATIONS[0], max_tokens=5).json()["choices"][0]["message"]
    image = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
    assert_openai_error(
        chat(client, [{"role": "user", "content": image}]), 400, "messages[0].content[0].type"
    )


def test_context_window_is_respected(tiny_model_dir, slot):
    small = ModelSlot("tiny", slot.model, slot.tokenizer)
    small.context = 40  # the prompt of CONVERSATIONS[0] is 31 tokens
    client = TestClient(create_app([small], max_tokens_limit=64))
    assert prompt_tokens(slot.tokenizer, CONVERSATIONS[0]) == 31
    error = assert_openai_error(chat(client, CONVERSATIONS[0], max_tokens=10), 400, "messages")
    assert error["code"] == "context_length_exceeded" and "40 tokens" in error["message"]
    assert (
        chat(client, CONVERSATIONS[0]).json()["usage"]["completion_tokens"] == 9
    )  # the default shrinks to fit
    assert chat(client, CONVERSATIONS[0], max_tokens=9).status_code == 200


def test_api_key_is_required_when_set(slot):
    client = TestClient(create_app([slot], api_key="s3cret"))
    body = {"model": "tiny", "messages": CONVERSATIONS[0], "max_tokens": 2}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "s3cret"},
        {"Authorization": "Basic s3cret"},
    ):
        error = assert_openai_error(client.post("/v1/chat/completions", json=body, headers=headers), 401)
        assert error["code"] == "invalid_api_key"
        assert_openai_error(client.get("/v1/models", headers=headers), 401)
    # checked before the body is read: a bad body without the key is still a 401
    assert_openai_error(client.post("/v1/chat/completions", content=b"{nope"), 401)
    good = {"Authorization": "Bearer s3cret"}
    assert client.post("/v1/chat/completions", json=body, headers=good).status_code == 200
    assert client.get("/v1/models", headers=good).status_code == 200


def test_request_body_limit(slot):
    client = TestClient(create_app([slot], max_request_bytes=400))
    small = {"model": "tiny", "messages": CONVERSATIONS[0], "max_tokens": 2}
    assert client.post("/v1/chat/completions", json=small).status_code == 200
    big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 500}], "max_tokens": 2}
    error = assert_openai_error(client.post("/v1/chat/completions", json=big), 413)
    assert "400 bytes" in error["message"]

    import json

    data = json.dumps(big).encode()
    chunked = (data[i : i + 100] for i in range(0, len(data), 100))  # no Content-Length: counted as read
    response = client.post(
        "/v1/chat/completions", content=chunked, headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_openai_error(response, 413)


def test_one_generation_at_a_time_per_model_and_answers_unchanged(slot):
    """Four threads generate on one model through the server's engine: the model never runs two
    forward passes at once (one scheduler thread batches them), and each reply equals the one
    generated alone."""
    options = GenerationOptions(max_new_tokens=10)
    prompts = [slot.chat_prompt(c) for c in CONVERSATIONS] + [slot.text_prompt("Once upon a time")]
    alone = ["".join(slot.generate(p, options, strip=True, outcome=Outcome(len(p)))) for p in prompts]
    active, most = [0], [0]
    guard = threading.Lock()

    def enter(*_):
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])

    def leave(*_):
        with guard:
            active[0] -= 1

    hooks = [slot.model.register_forward_pre_hook(enter), slot.model.register_forward_hook(leave)]
    results: dict[int, str] = {}
    barrier = threading.Barrier(len(prompts))

    def ask(i: int) -> None:
        barrier.wait()
        results[i] = "".join(slot.generate(prompts[i], options, strip=True, outcome=Outcome(len(prompts[i]))))

    try:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for h in hooks:
            h.remove()
    assert [results[i] for i in range(len(prompts))] == alone and all(alone)
    assert most[0] == 1
    wait_idle(slot)


def wait_idle(slot, timeout: float = 10) -> None:
    """Until the slot's scheduler has no request running or waiting (rows leave between steps)."""
    import time

    deadline = time.monotonic() + timeout
    while slot.scheduler.active():
        assert time.monotonic() < deadline, "the scheduler kept a finished or closed request"
        time.sleep(0.01)


def test_closing_a_stream_stops_generation_and_frees_the_model(slot):
    pieces = slot.generate(
        slot.text_prompt("Once upon a time"),
        GenerationOptions(max_new_tokens=2000),
        strip=False,
        outcome=(out := Outcome(5)),
    )
    next(pieces)
    assert slot.scheduler.active() == 1
    pieces.close()
    wait_idle(slot)
    assert out.finish_reason is None and len(pieces.request.generated) < 100  # cancelled, not finished


def test_a_model_without_a_chat_template(tiny_model_dir, slot):
    """Chat needs a template (a 400 that says so); raw completions still work."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    client = TestClient(create_app([ModelSlot("base", slot.model, tokenizer)]))
    body = {"model": "base", "messages": CONVERSATIONS[0], "max_tokens": 4}
    assert (
        "no chat template"
        in assert_openai_error(client.post("/v1/chat/completions", json=body), 400)["message"]
    )
    done = client.post(
        "/v1/completions", json={"model": "base", "prompt": "Once upon a time", "max_tokens": 4}
    )
    assert done.json()["choices"][0]["text"] == raw_continuation(slot.model, tokenizer, "Once upon a time", 4)


def test_bfloat16_serving_answers_as_the_bfloat16_model_does(tiny_model_dir):
    """--dtype bfloat16: the loaded model is cast once, and a completion equals transformers' own
    greedy continuation of that bf16 model (the engine adds nothing); an unknown dtype is refused."""
    import torch

    from lmtune.errors import ConfigError

    half = load_slots([str(tiny_model_dir)], ["tiny"], dtype="bfloat16")[0]
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}
    text = TestClient(create_app([half], max_tokens_limit=64)).post("/v1/completions", json=body)
    assert text.status_code == 200, text.text
    expected = raw_continuation(half.model, half.tokenizer, "Once upon a time", 12)
    assert text.json()["choices"][0]["text"] == expected and expected
    with pytest.raises(ConfigError, match="--dtype 'float16'"):
        load_slots([str(tiny_model_dir)], dtype="float16")
