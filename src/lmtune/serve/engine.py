"""Generation for the server: one lock per model, and replies streamed token by token.

A torch model must not generate from two threads at once, and a tokenizer is shared state, so every
generation on a model holds that model's lock from its first token to its last (a stream holds it
until the stream ends or is closed, e.g. when the client disconnects). Requests to different models
run side by side.

The streaming itself is `lmtune.infer.generate.stream_tokens`, the loop `lmtune chat` uses too (same
prompt rendering, every eos id, stop strings, whitespace strip for chat replies): a reply here equals
`generate_replies`. `/v1/completions` feeds it raw text without the chat template.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from contextlib import nullcontext
from typing import Any

from lmtune.infer.generate import GenerationOptions, render_prompt, stream_tokens
from lmtune.infer.generate import StreamOutcome as Outcome

# torch.manual_seed sets one process-wide generator, so sampled generations (on any model) take turns:
# a request's seed then gives the same text whatever else the server is doing. Greedy ones never wait.
_SAMPLING = threading.Lock()


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
            yield from stream_tokens(
                self.model,
                self.tokenizer,
                prompt_ids,
                options,
                strip=strip,
                outcome=outcome,
                decode_lock=self._tokenizer_lock,
            )
