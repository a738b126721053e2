"""A served model id: its tokenizer, the scheduler that generates for it, and its adapter (if any).

Generation goes through the model's `Scheduler` (continuous batching, see scheduler.py); a reply is
turned into text with `lmtune.infer.generate.ReplyText`, the streaming rules `lmtune chat` uses
(prompt rendered with the model's own template, every eos id, stop strings, whitespace strip for chat
replies), so a greedy reply here equals `generate_replies`. `/v1/completions` feeds raw text
without the chat template. Several slots can share one scheduler: LoRA adapters of one base model.
"""

from __future__ import annotations

import threading
from typing import Any

from lmtune.infer.generate import GenerationOptions, ReplyText, _eos_ids, render_prompt
from lmtune.infer.generate import StreamOutcome as Outcome
from lmtune.serve.engine.scheduler import _END, Request, Scheduler
from lmtune.serve.engine.worker import Worker

DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_QUEUE = 64


class ModelSlot:
    """One served model id: its loaded model and tokenizer, scheduler and adapter name."""

    def __init__(
        self,
        model_id: str,
        model: Any,
        tokenizer: Any,
        source: str = "",
        *,
        scheduler: Scheduler | None = None,
        adapter: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
        worker: Worker | None = None,
    ) -> None:
        self.id, self.model, self.tokenizer, self.source = model_id, model, tokenizer, source
        self.eos = _eos_ids(model, tokenizer)
        self.scheduler = scheduler or Scheduler(
            model, self.eos, max_batch=max_batch, max_queue=max_queue, worker=worker
        )
        self.adapter = adapter
        self.note = ""  # shown after the source in the startup banner
        self._tokenizer_lock = threading.Lock()  # encoding and decoding happen in many request threads
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
    ) -> Reply:
        """Queue the generation now (raises scheduler.QueueFull when the server is full) and return
        the reply as an iterator of text pieces that join to the whole reply. Closing it (or reading
        it to the end) frees the request's place in the batch."""
        request = self.scheduler.submit(prompt_ids, options, self.adapter)
        text = ReplyText(
            self.tokenizer, self.eos, options.stop, strip=strip, decode_lock=self._tokenizer_lock
        )
        return Reply(request, text, outcome, self.scheduler)


class Reply:
    """The text pieces of one request, read from the tokens its scheduler hands over."""

    def __init__(self, request: Request, text: ReplyText, outcome: Outcome, scheduler: Scheduler) -> None:
        self.request, self.text, self.outcome, self.scheduler = request, text, outcome, scheduler
        self.done = False

    def __iter__(self) -> Reply:
        return self

    def __next__(self) -> str:
        while not self.done:
            item = self.request.tokens.get()
            if item is _END:
                self._finish()
                if rest := self.text.close():
                    return rest
                break
            if isinstance(item, BaseException):
                self.close()
                raise item
            piece = self.text.push(item)
            if self.text.finish is not None:  # end token or stop string: no more tokens needed
                self._finish()
                rest = self.text.close()
                piece += rest
            if piece:
                return piece
        raise StopIteration

    def _finish(self) -> None:
        self.close()
        self.outcome.completion_tokens = len(self.text.generated)
        self.outcome.finish_reason = self.text.finish or "length"

    def close(self) -> None:
        """Free the request's row at the next step boundary (a no-op once it has finished)."""
        if not self.done:
            self.done = True
            self.request.cancel()
            self.scheduler.wake()
