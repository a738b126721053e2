"""Generation for the server: one lock per model, and replies streamed token by token.

A torch model must not generate from two threads at once, and a tokenizer is shared state, so every
generation on a model holds that model's lock from its first token to its last (a stream holds it
until the stream ends or is closed, e.g. when the client disconnects). Requests to different models
run side by side.

The decoding is the same as `lmtune.infer.generate` (same prompt rendering, `_generate_kwargs`, every
eos id, stop strings, whitespace strip for chat replies): a reply here equals `generate_replies`.
It is written again here, for one prompt, because the server must also know how many tokens were
generated and why generation ended (usage and finish_reason), which `stream_reply` does not report,
and because `/v1/completions` continues raw text without the chat template.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from lmtune.infer.generate import (
    GenerationOptions,
    _device,
    _generate_kwargs,
    _held_back,
    _TrainingModeOff,
    cut_at_stop,
    render_prompt,
)

# torch.manual_seed sets one process-wide generator, so sampled generations (on any model) take turns:
# a request's seed then gives the same text whatever else the server is doing. Greedy ones never wait.
_SAMPLING = threading.Lock()


@dataclass
class Outcome:
    """What the usage block and finish_reason report, filled in when a generation ends."""

    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str | None = None  # "stop" (end token or stop string) or "length"


class ModelSlot:
    """One served model: its id, the loaded model and tokenizer, and the lock its generations hold."""

    def __init__(self, model_id: str, model: Any, tokenizer: Any, source: str = "") -> None:
        self.id, self.model, self.tokenizer, self.source = model_id, model, tokenizer, source
        self.lock = threading.Lock()  # held for a whole generation
        self._tokenizer_lock = threading.Lock()  # short: encoding prompts while another request generates
        config = getattr(model, "config", None)
        self.context: int | None = getattr(config, "max_position_embeddings", None)

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of the conversation rendered with the model's own chat template (as in training)."""
        return self._encode(render_prompt(self.tokenizer, messages), special=False)  # template has any BOS

    def text_prompt(self, text: str) -> list[int]:
        """Token ids of raw text, with the special tokens the tokenizer adds to plain text (e.g. BOS)."""
        return self._encode(text, special=True)

    def _encode(self, text: str, *, special: bool) -> list[int]:
        with self._tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def generate(
        self, prompt_ids: list[int], options: GenerationOptions, *, strip: bool, outcome: Outcome
    ) -> Generator[str, None, None]:
        """Yield the reply in pieces; they join to the whole reply. The lock is taken at the first
        `next` and released when the generator finishes or is closed."""
        sampling = _SAMPLING if options.temperature > 0 else nullcontext()
        with self.lock, sampling:
            yield from _pieces(self, prompt_ids, options, strip=strip, outcome=outcome)


def _token_queue() -> Any:
    """A transformers streamer that hands each generated token id to the reading thread."""
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


def _pieces(
    slot: ModelSlot, prompt_ids: list[int], options: GenerationOptions, *, strip: bool, outcome: Outcome
) -> Generator[str, None, None]:
    """Generate on a worker thread and yield text as soon as it cannot change any more.

    Text that might be the start of a stop string (and, for chat, trailing whitespace) is held back
    until it is known not to be cut. Hitting a stop string, or closing this generator, cancels the
    worker at its next token.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    model, tokenizer = slot.model, slot.tokenizer
    kwargs = _generate_kwargs(model, tokenizer, options)
    eos = set(kwargs["eos_token_id"])
    stop = [s for s in options.stop if s]
    streamer = _token_queue()
    cancel = threading.Event()
    errors: list[BaseException] = []

    class Cancel(StoppingCriteria):
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
                    stopping_criteria=StoppingCriteriaList([Cancel()]),
                    **kwargs,
                )
        except BaseException as err:  # re-raised in the reading thread below
            errors.append(err)
            streamer.end()

    if options.seed is not None:
        torch.manual_seed(options.seed)  # process-wide, so the worker thread samples from it
    thread = threading.Thread(target=work, daemon=True, name=f"lmtune-serve-{slot.id}")
    thread.start()
    generated: list[int] = []
    full, sent, finish = "", 0, "length"  # raw text so far; characters of the reply already yielded
    try:
        while (token := streamer.ids.get()) is not None:
            if token in eos:
                finish = "stop"
                break
            generated.append(token)
            with slot._tokenizer_lock:
                full = tokenizer.decode(generated, skip_special_tokens=True)
            if full.endswith("\ufffd"):  # a character split across tokens: wait for the rest
                continue
            if stop and cut_at_stop(full, stop) != full:
                finish = "stop"
                break
            lead = len(full) - len(full.lstrip()) if strip else 0
            safe = len(full) - _held_back(full, stop)
            if strip:  # never send whitespace that may turn out to end the reply
                safe = len(full[:safe].rstrip())
            if safe > lead + sent:
                yield full[lead + sent : safe]
                sent = safe - lead
        if errors:
            raise errors[0]
        final = cut_at_stop(full, stop)
        final = final.strip() if strip else final
        if len(final) > sent:
            yield final[sent:]
        outcome.completion_tokens, outcome.finish_reason = len(generated), finish
    finally:
        cancel.set()
        thread.join()
