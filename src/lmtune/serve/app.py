"""The FastAPI app: /v1/models, /v1/chat/completions and /v1/completions, with OpenAI's shapes.

Routes are plain `def`s, so FastAPI runs each in its thread pool; a request thread queues its
generation with the model's scheduler (engine/, continuous batching) and reads the reply as it comes.
A full queue is 429 (with Retry-After) before anything is sent. `_EventStream` closes a stream's reply
however the response ends (finished, failed, or the client went away), which frees its batch row at
the next decoding step.

Every error, including FastAPI's own validation errors and unknown routes, is OpenAI's
`{"error": {"message", "type", "param", "code"}}` body, so OpenAI clients raise the right exception.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import closing
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmtune.errors import LmtuneError
from lmtune.serve.engine import ModelSlot, Outcome, QueueFull, Reply
from lmtune.serve.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    SamplingRequest,
    error_body,
    new_id,
    now,
    sse,
    usage,
)
from lmtune.serve.timeouts import DEFAULT_READ_TIMEOUT, timeout_message


def create_app(
    slots: Sequence[ModelSlot],
    *,
    api_key: str | None = None,
    max_tokens_limit: int = 2048,
    max_request_bytes: int = 1_000_000,
    read_timeout: float | None = DEFAULT_READ_TIMEOUT,
) -> FastAPI:
    """The app serving `slots` (each already loaded), chosen per request by the `model` field.
    `read_timeout`: seconds a request's body may take to arrive once its headers are in (None: no limit)."""
    models = {slot.id: slot for slot in slots}
    created = now()
    # No /docs or /openapi.json: the API is OpenAI's (docs/serve.md), and less surface is safer.
    app = FastAPI(title="lmtune", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard, api_key=api_key, max_bytes=max_request_bytes, read_timeout=read_timeout)
    _install_error_handlers(app)

    def find(name: str) -> ModelSlot:
        if name not in models:
            served = ", ".join(repr(m) for m in models)
            raise APIError(
                404,
                f"The model {name!r} does not exist; this server serves {served}.",
                param="model",
                code="model_not_found",
            )
        return models[name]

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(m, created) for m in models]}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str) -> dict[str, Any]:
        return _model_card(find(model_id).id, created)

    @app.post("/v1/chat/completions")
    def chat_completions(request: ChatRequest) -> Any:
        slot = find(request.model)
        _check_supported(request)
        try:
            prompt_ids = slot.chat_prompt(request.conversation())
        except ValueError as err:  # e.g. the conversation does not end with a user message
            raise APIError(400, f"{err}.", param="messages") from err
        outcome, pieces = _start(
            slot, request, prompt_ids, max_tokens_limit, default=max_tokens_limit, strip=True
        )
        meta = {"id": new_id("chatcmpl"), "created": now(), "model": slot.id}
        if request.stream:
            return _EventStream(_chat_events(pieces, outcome, meta, request.include_usage()), pieces)
        with closing(pieces):
            text = "".join(pieces)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": outcome.finish_reason,
        }
        body = {**meta, "object": "chat.completion", "choices": [choice]}
        return {**body, "usage": usage(outcome.prompt_tokens, outcome.completion_tokens)}

    @app.post("/v1/completions")
    def completions(request: CompletionRequest) -> Any:
        slot = find(request.model)
        _check_supported(request)
        text = request.text()
        prompt_ids = slot.text_prompt(text)
        if not prompt_ids:
            raise APIError(400, "The prompt is empty: give some text to continue.", param="prompt")
        # 16 is OpenAI's default for completions; chat defaults to the server's limit.
        outcome, pieces = _start(slot, request, prompt_ids, max_tokens_limit, default=16, strip=False)
        meta = {"id": new_id("cmpl"), "created": now(), "model": slot.id}
        if request.stream:
            return _EventStream(_completion_events(pieces, outcome, meta, request.include_usage()), pieces)
        with closing(pieces):
            text = "".join(pieces)
        choice = {
            "text": text,
            "index": 0,
            "logprobs": None,
            "finish_reason": outcome.finish_reason,
        }
        body = {**meta, "object": "text_completion", "choices": [choice]}
        return {**body, "usage": usage(outcome.prompt_tokens, outcome.completion_tokens)}

    return app


def _model_card(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "lmtune"}


def _check_supported(request: SamplingRequest) -> None:
    for name, off in request.unsupported():
        raise APIError(
            400,
            f"lmtune serve does not support {name!r} (leave it out, or set it to {off!r}).",
            param=name,
            code="unsupported_parameter",
        )


def _start(
    slot: ModelSlot, request: SamplingRequest, prompt_ids: list[int], limit: int, *, default: int, strip: bool
) -> tuple[Outcome, Reply]:
    """The token budget checked against the server's limit and the model's context, then the (not yet
    started) generation. An explicit max_tokens that does not fit is an error; the default shrinks."""
    asked = request.requested_tokens()
    param = "max_completion_tokens" if getattr(request, "max_completion_tokens", None) else "max_tokens"
    if asked is not None and asked > limit:
        raise APIError(
            400,
            f"{param} is {asked}, above this server's limit of {limit} (lmtune serve --max-tokens-limit).",
            param=param,
        )
    budget = asked if asked is not None else min(default, limit)
    if slot.context is not None:
        room = slot.context - len(prompt_ids)
        if room < 1 or (asked is not None and asked > room):
            raise APIError(
                400,
                f"This model's context is {slot.context} tokens; the prompt has {len(prompt_ids)} and "
                f"{budget} more were asked for. Shorten the prompt or lower {param}.",
                param="messages" if strip else "prompt",
                code="context_length_exceeded",
            )
        budget = min(budget, room)
    try:
        options = request.options(budget)
    except LmtuneError as err:
        raise APIError(400, str(err)) from err
    outcome = Outcome(prompt_tokens=len(prompt_ids))
    try:
        return outcome, slot.generate(prompt_ids, options, strip=strip, outcome=outcome)
    except QueueFull:
        scheduler = slot.scheduler
        raise APIError(
            429,
            f"The server is busy: {scheduler.max_batch} requests are generating and {scheduler.max_queue} "
            "are waiting (lmtune serve --max-batch / --max-queue). Retry shortly.",
            code="queue_full",
            type="rate_limit_error",
        ) from None


def _chat_events(pieces: Reply, outcome: Outcome, meta: dict[str, Any], include_usage: bool) -> Iterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        extra = {"usage": None} if include_usage else {}
        return sse({**meta, "object": "chat.completion.chunk", "choices": [choice], **extra})

    with closing(pieces):
        yield chunk({"role": "assistant", "content": ""})
        try:
            for piece in pieces:
                yield chunk({"content": piece})
        except Exception as err:  # headers are sent: report it in the stream, as OpenAI does
            yield sse(error_body(f"Generation failed: {err}", type="server_error"))
            return
        yield chunk({}, outcome.finish_reason)
    if include_usage:
        tokens = usage(outcome.prompt_tokens, outcome.completion_tokens)
        yield sse({**meta, "object": "chat.completion.chunk", "choices": [], "usage": tokens})
    yield sse("[DONE]")


def _completion_events(
    pieces: Reply, outcome: Outcome, meta: dict[str, Any], include_usage: bool
) -> Iterator[str]:
    def chunk(text: str, finish: str | None = None) -> str:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        extra = {"usage": None} if include_usage else {}
        return sse({**meta, "object": "text_completion", "choices": [choice], **extra})

    with closing(pieces):
        try:
            for piece in pieces:
                yield chunk(piece)
        except Exception as err:
            yield sse(error_body(f"Generation failed: {err}", type="server_error"))
            return
        yield chunk("", outcome.finish_reason)
    if include_usage:
        tokens = usage(outcome.prompt_tokens, outcome.completion_tokens)
        yield sse({**meta, "object": "text_completion", "choices": [], "usage": tokens})
    yield sse("[DONE]")


class _EventStream(StreamingResponse):
    """Server-sent events from a blocking generator, stepped in worker threads and always closed.

    Closing matters: the reply holds a row of its model's batch. Starlette stops iterating when the client
    disconnects but does not close a generator; this response closes it at the end of `__call__`,
    after any `next` in flight has returned.
    """

    def __init__(self, events: Iterator[str], reply: Reply) -> None:
        self.events, self.reply = events, reply
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(self._step(), media_type="text/event-stream", headers=headers)

    async def _step(self) -> AsyncIterator[str]:
        while (event := await anyio.to_thread.run_sync(next, self.events, None)) is not None:
            yield event

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.events, "close", None)
            with anyio.CancelScope(shield=True):
                if close is not None:
                    await anyio.to_thread.run_sync(close)
                self.reply.close()  # also when the events never started (the client left at once)


class _Guard:
    """ASGI middleware run before any body is read: the API key (401), then the body size (413) and
    the time the body takes to arrive (408: a slow client is cut off, see timeouts.py)."""

    def __init__(
        self, app: ASGIApp, *, api_key: str | None, max_bytes: int, read_timeout: float | None = None
    ) -> None:
        self.app, self.api_key, self.max_bytes, self.read_timeout = app, api_key, max_bytes, read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.api_key is not None and not self._authorized(headers.get("authorization", "")):
            error = APIError(
                401,
                "Missing or wrong API key: send the header 'Authorization: Bearer KEY' with the key "
                "the server was started with (--api-key).",
                code="invalid_api_key",
            )
            await _error_response(error)(scope, receive, send)
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await _error_response(self._too_large())(scope, receive, send)
            return
        received, body_done = 0, False
        deadline = None if self.read_timeout is None else anyio.current_time() + self.read_timeout

        async def counted() -> Message:  # a chunked body has no length up front: count it as it comes
            nonlocal received, body_done
            if body_done or deadline is None:  # later receives wait for a disconnect: no deadline
                return await receive()
            with anyio.move_on_after(deadline - anyio.current_time()) as timer:
                message = await receive()
            if timer.cancelled_caught:
                raise APIError(408, timeout_message(self.read_timeout or 0, "body"), code="request_timeout")
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large()
            return message

        await self.app(scope, counted, send)

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        expected = (self.api_key or "").encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)

    def _too_large(self) -> APIError:
        return APIError(
            413,
            f"The request body is larger than this server's limit of {self.max_bytes} bytes "
            "(lmtune serve --max-request-bytes).",
            code="request_too_large",
        )


def _error_response(error: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    if error.status == 429:
        headers = {"Retry-After": "1"}
    if error.status in (408, 413):  # the rest of the body may never come (or is not wanted): hang up
        headers = {"Connection": "close"}
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, APIError)
        return _error_response(err)

    async def invalid(_: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, RequestValidationError)
        return _error_response(_validation_error(err.errors()))

    async def http_error(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        message = f"{err.detail}: {request.method} {request.url.path}"
        if isinstance(err.__cause__, RecursionError):  # json.loads on e.g. 100000 nested brackets
            message = "The request body is nested too deeply to be parsed as JSON."
        if err.status_code == 404:
            message += " (the API is /v1/models, /v1/chat/completions and /v1/completions)"
        return _error_response(APIError(err.status_code, message, code=code))

    async def user_error(_: Request, err: Exception) -> JSONResponse:
        return _error_response(APIError(400, str(err)))

    async def failed(_: Request, err: Exception) -> JSONResponse:  # a bug or a model error: still JSON
        return _error_response(APIError(500, f"Generation failed: {err}", type="server_error"))

    app.add_exception_handler(Exception, failed)
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(LmtuneError, user_error)  # e.g. a tokenizer without a chat template


def _validation_error(errors: Sequence[Any]) -> APIError:
    """FastAPI's validation errors as one sentence naming the parameter: the deepest one, which for a
    value matching no member of a union (a string or a list of parts) is the most specific."""

    def where(error: Any) -> list[Any]:  # without "body" and the union-member tags ("str", "list[TextPart]")
        return [p for p in error.get("loc", ()) if p != "body" and not _is_type_tag(p)]

    first = dict(max(errors, key=lambda e: len(where(e)))) if errors else {}
    loc = where(first)
    kind = first.get("type", "")
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "invalid JSON")
        return APIError(400, f"The request body is not valid JSON ({reason}).")
    if not loc:
        return APIError(
            400,
            "The request needs a JSON object body, sent with the header 'Content-Type: application/json'.",
        )
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if kind == "missing":
        return APIError(400, f"Missing required parameter: {param!r}.", param=param)
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return APIError(400, f"Invalid value for {param!r}: {message}.", param=param)


def _is_type_tag(part: object) -> bool:
    return isinstance(part, str) and (
        part in {"str", "int", "float", "bool"} or "[" in part or part[:1].isupper()
    )
