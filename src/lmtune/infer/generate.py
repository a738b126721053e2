"""Reply generation with the chat template the model was trained with.

The silent inference bugs this module guards against: a prompt rendered with a different template
than training used (we always render with the tokenizer's own template, which the run directory
saves), right padding in a batch (the model would continue from pad tokens), a missing attention
mask, and a model that never stops because only one of its end-of-turn ids is passed to
`generate`. Batched output is tested to equal one-at-a-time output.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmtune.errors import ConfigError, ModelError


@dataclass
class GenerationOptions:
    """How to decode a reply; the field names match the CLI options of chat and generate."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # the output is cut before the first one

    def __post_init__(self) -> None:
        """Reject impossible settings with a sentence (a CLI flag or config value the user can fix)."""
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """`messages` preceded by a system message when `system` is given (else unchanged)."""
    return ([{"role": "system", "content": system}] if system else []) + list(messages)


def render_prompt(tokenizer: Any, conversation: Sequence[dict]) -> str:
    """The exact prompt text the model sees: the tokenizer's chat template plus the assistant header."""
    if not conversation:
        raise ValueError("a conversation needs at least one message")
    last = conversation[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        raise ValueError(f"a conversation must end with a user message, got role {last.get('role')!r}")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ModelError(
            "The model's tokenizer has no chat template, so a conversation cannot be formatted. "
            "Fix: use an instruct/chat model, or fine-tune with a `template` set so the run saves one."
        )
    return tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=False)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` cut before the earliest occurrence of any (non-empty) stop string."""
    positions = [i for s in stop if s and (i := text.find(s)) >= 0]
    return text[: min(positions)] if positions else text


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Union of the tokenizer's eos and the generation config's eos ids (e.g. <|im_end|> and <|endoftext|>)."""
    from lmtune.models.tokens import unique_ids

    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return unique_ids(tokenizer.eos_token_id, gen_eos)


def _generate_kwargs(model: Any, tokenizer: Any, options: GenerationOptions) -> dict[str, Any]:
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    sample = options.temperature > 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": options.max_new_tokens,
        "do_sample": sample,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "repetition_penalty": options.repetition_penalty,
        # Explicit values so a model's own generation_config (e.g. top_k=50) does not leak in.
        "temperature": options.temperature if sample else None,
        "top_p": options.top_p if sample else None,
        "top_k": options.top_k if sample else None,
    }
    return kwargs


class _TrainingModeOff:
    """`model.eval()` for the duration, restoring training mode after (callers may be mid-training)."""

    def __init__(self, model: Any) -> None:
        self.model, self.was_training = model, bool(getattr(model, "training", False))

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        if self.was_training:
            self.model.train()


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def generate_replies(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict]],
    options: GenerationOptions | None = None,
    *,
    batch_size: int = 8,
) -> list[str]:
    """One reply per conversation, generated in left-padded batches; equal to generating each alone."""
    return [
        text
        for text, _ in generate_with_counts(model, tokenizer, conversations, options, batch_size=batch_size)
    ]


def generate_with_counts(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict]],
    options: GenerationOptions | None = None,
    *,
    batch_size: int = 8,
) -> list[tuple[str, int]]:
    """`generate_replies` plus, per reply, the number of tokens generated (up to and without the end
    token; the stop-string cut does not change it): what generation speed is measured in."""
    import torch

    options = options or GenerationOptions()
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    prompts = [render_prompt(tokenizer, c) for c in conversations]
    kwargs = _generate_kwargs(model, tokenizer, options)
    eos = set(kwargs["eos_token_id"])
    if options.seed is not None:
        torch.manual_seed(options.seed)

    old_side, old_pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"  # generation continues from the last column, so pads go first
    if tokenizer.pad_token is None:
        tokenizer.pad_token_id = kwargs["pad_token_id"]
    replies: list[tuple[str, int]] = []
    try:
        with _TrainingModeOff(model), torch.inference_mode():
            device = _device(model)
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer(
                    prompts[start : start + batch_size],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,  # the template already has any BOS
                )
                input_ids = enc["input_ids"].to(device)
                out = model.generate(
                    input_ids=input_ids, attention_mask=enc["attention_mask"].to(device), **kwargs
                )
                for row in out[:, input_ids.shape[1] :].tolist():
                    end = next((i for i, t in enumerate(row) if t in eos), len(row))
                    text = tokenizer.decode(row[:end], skip_special_tokens=True)
                    replies.append((cut_at_stop(text, options.stop).strip(), end))
    finally:
        tokenizer.padding_side = old_side
        if old_pad is None:
            tokenizer.pad_token = None
    return replies


def _held_back(text: str, stop: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that could still grow into a stop string."""
    best = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if s.startswith(text[-k:]):
                best = k
                break
    return best


@dataclass
class StreamOutcome:
    """How a streamed generation ended, filled in when it does (the server's usage and finish_reason)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None  # "stop" (end token or stop string) or "length"


def stream_reply(
    model: Any,
    tokenizer: Any,
    conversation: list[dict],
    options: GenerationOptions | None = None,
) -> Generator[str, None, None]:
    """Yield the reply in pieces as it is generated; the pieces join to what `generate_replies` returns."""
    prompt = render_prompt(tokenizer, conversation)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]  # the template already has any BOS
    yield from stream_tokens(model, tokenizer, list(ids), options or GenerationOptions(), strip=True)


def _token_queue() -> Any:
    """A transformers streamer that hands each generated token id to the reading thread."""
    import queue

    from transformers.generation.streamers import BaseStreamer

    class TokenQueue(BaseStreamer):
        def __init__(self) -> None:
            self.ids: queue.SimpleQueue[int | None] = queue.SimpleQueue()
            self.prompt = True  # generate() first puts the prompt itself

        def put(self, value: Any) -> None:
            if self.prompt:
                self.prompt = False
                return
            for token in value.reshape(-1).tolist():
                self.ids.put(token)

        def end(self) -> None:
            self.ids.put(None)

    return TokenQueue()


def stream_tokens(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[int],
    options: GenerationOptions,
    *,
    strip: bool,
    outcome: StreamOutcome | None = None,
    decode_lock: Any = None,
) -> Generator[str, None, None]:
    """Generate on a worker thread and yield text as soon as it cannot change any more: the one
    streaming loop behind `lmtune chat` and `lmtune serve`.

    Text that might be the start of a stop string (and, with `strip`, trailing whitespace) is held
    back until it is known not to be cut. Hitting a stop string, or closing this generator, cancels
    the worker at its next token. `decode_lock` guards a tokenizer shared with other threads.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    kwargs = _generate_kwargs(model, tokenizer, options)
    eos = set(kwargs["eos_token_id"])
    stop = [s for s in options.stop if s]
    streamer = _token_queue()
    cancel = threading.Event()
    errors: list[BaseException] = []

    class _Cancel(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
            return torch.full(
                (input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device
            )

    def work() -> None:
        try:
            with _TrainingModeOff(model), torch.inference_mode():
                ids = torch.tensor([prompt_ids], device=_device(model))
                model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Cancel()]),
                    **kwargs,
                )
        except BaseException as err:  # re-raised in the reading thread below
            errors.append(err)
            streamer.end()

    if options.seed is not None:
        torch.manual_seed(options.seed)  # process-wide, so the worker thread samples from it
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    reply = ReplyText(tokenizer, eos, stop, strip=strip, decode_lock=decode_lock)
    try:
        while (token := streamer.ids.get()) is not None:
            piece = reply.push(token)
            if piece:
                yield piece
            if reply.finish is not None:
                break
        if errors:
            raise errors[0]
        if rest := reply.close():
            yield rest
        if outcome is not None:
            outcome.completion_tokens, outcome.finish_reason = len(reply.generated), reply.finish
    finally:
        cancel.set()
        thread.join()


class ReplyText:
    """Token ids in, reply text out, as soon as it cannot change any more (the streaming rules of
    `stream_tokens`, shared with the server's batching engine).

    Text that might be the start of a stop string (and, with `strip`, trailing whitespace) is held
    back until it is known not to be cut; a character split across tokens waits for its rest.
    `finish` becomes "stop" at an end token or a stop string; the caller then stops feeding tokens.
    `decode_lock` guards a tokenizer shared with other threads.
    """

    def __init__(
        self, tokenizer: Any, eos: Any, stop: Sequence[str], *, strip: bool, decode_lock: Any = None
    ) -> None:
        self.tokenizer, self.eos, self.stop, self.strip = tokenizer, set(eos), [s for s in stop if s], strip
        self.lock = decode_lock if decode_lock is not None else contextlib.nullcontext()
        self.generated: list[int] = []
        self.full, self.sent = "", 0  # raw text so far; characters of the reply already given out
        self.finish: str | None = None

    def push(self, token: int) -> str:
        """The new piece of reply text this token makes safe to show ("" if none yet)."""
        if token in self.eos:
            self.finish = "stop"
            return ""
        self.generated.append(token)
        with self.lock:
            self.full = full = self.tokenizer.decode(self.generated, skip_special_tokens=True)
        if full.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            return ""
        if self.stop and cut_at_stop(full, self.stop) != full:
            self.finish = "stop"
            return ""
        lead = len(full) - len(full.lstrip()) if self.strip else 0
        safe = len(full) - _held_back(full, self.stop)
        if self.strip:  # whitespace before a held-back partial stop string may end the reply
            safe = len(full[:safe].rstrip())
        if safe > lead + self.sent:
            piece = full[lead + self.sent : safe]
            self.sent = safe - lead
            return piece
        return ""

    def close(self) -> str:
        """The rest of the reply once generation has ended (finish defaults to "length")."""
        self.finish = self.finish or "length"
        final = cut_at_stop(self.full, self.stop)
        final = final.strip() if self.strip else final
        return final[self.sent :] if len(final) > self.sent else ""
