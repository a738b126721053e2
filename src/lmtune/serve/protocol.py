"""The OpenAI wire format: request bodies (validated strictly), response and stream-chunk shapes, errors.

Only what lmtune can honour is accepted. A parameter that would change the answer but is not
implemented (tools, logprobs, n > 1, penalties, ...) is a 400 naming it, never silently ignored;
bookkeeping fields clients send (user, metadata, store, ...) are ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmtune.infer.generate import GenerationOptions


class APIError(StarletteHTTPException):
    """An error the client gets as OpenAI's `{"error": {...}}` body with this status.

    An HTTPException, so FastAPI passes it through unchanged when it is raised while reading the body.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(status_code=status, detail=message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


MAX_STOP_STRINGS = 16  # OpenAI allows 4; each one is searched for after every generated token
MAX_STOP_CHARS = 256


class _Strict(BaseModel):
    # strict: "0.5" is not a number and 1 is not a bool, as in OpenAI's API; unknown fields are ignored.
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_dict(self) -> dict[str, str]:
        """The canonical {role, content} message (text parts joined; `developer` is a system message)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(_Strict):
    include_usage: bool = False


class SamplingRequest(_Strict):
    """Fields shared by both endpoints. An omitted temperature is greedy (lmtune's default everywhere)."""

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # not OpenAI's, but common in compatible servers
    repetition_penalty: float | None = Field(None, gt=0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Accepted only at their "off" value (see `unsupported`).
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        """Thousands of stop strings (or huge ones) would make every decoding step slow for the whole
        batch: a short list of short strings is all a client needs."""
        many = [stop] if isinstance(stop, str) else stop or []
        if len(many) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are accepted, got {len(many)}")
        if any(len(s) > MAX_STOP_CHARS for s in many):
            raise ValueError(f"each stop string must be at most {MAX_STOP_CHARS} characters")
        return stop

    def requested_tokens(self) -> int | None:
        return self.max_tokens

    def unsupported(self) -> list[tuple[str, Any]]:
        """Parameters that are set to something lmtune does not implement: (name, 'off' value)."""
        off: dict[str, Any] = {
            "n": 1,
            "logprobs": False,
            "top_logprobs": 0,
            "logit_bias": {},
            "presence_penalty": 0,
            "frequency_penalty": 0,
        }
        return [(k, v) for k, v in off.items() if getattr(self, k) not in (None, v)]

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def options(self, max_new_tokens: int) -> GenerationOptions:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return GenerationOptions(
            max_new_tokens=max_new_tokens,
            temperature=self.temperature if self.temperature is not None else 0.0,
            top_p=self.top_p if self.top_p is not None else 1.0,
            top_k=self.top_k or 0,
            repetition_penalty=self.repetition_penalty or 1.0,
            seed=self.seed,
            stop=stop,
        )


class ChatRequest(SamplingRequest):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def unsupported(self) -> list[tuple[str, Any]]:
        extra: dict[str, Any] = {"tools": [], "tool_choice": "none", "functions": [], "function_call": "none"}
        found = super().unsupported() + [
            (k, v) for k, v in extra.items() if getattr(self, k) not in (None, v)
        ]
        if self.response_format not in (None, {"type": "text"}):
            found.append(("response_format", {"type": "text"}))
        return found

    def conversation(self) -> list[dict[str, str]]:
        return [m.as_dict() for m in self.messages]


class CompletionRequest(SamplingRequest):
    prompt: str | list[str]
    echo: Any = None
    best_of: Any = None
    suffix: Any = None

    def unsupported(self) -> list[tuple[str, Any]]:
        extra: dict[str, Any] = {"echo": False, "best_of": 1, "suffix": ""}
        return super().unsupported() + [(k, v) for k, v in extra.items() if getattr(self, k) not in (None, v)]

    def text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise APIError(
                400, "Send one prompt per request (a list must hold exactly one string).", param="prompt"
            )
        return self.prompt[0]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: `data: {...}` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def now() -> int:
    return int(time.time())
