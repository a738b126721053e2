"""Interactive terminal chat (`lmtune chat`).

The conversation is kept as plain messages and re-rendered with the model's own chat template on
every turn (through `stream_reply`), so what the user tries here is formatted exactly as in
training, evaluation and serving.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmtune.infer.generate import GenerationOptions, stream_reply, with_system

HELP = (
    "Commands: /reset clears the conversation, /system TEXT sets the system prompt "
    "(/system alone removes it), /exit or /quit (or Ctrl-D) leaves, /help shows this."
)


def chat_loop(
    model: Any,
    tokenizer: Any,
    *,
    options: GenerationOptions,
    system: str | None = None,
    input_fn: Callable[[str], str] = input,
    print_fn: Callable[..., Any] = print,
) -> None:
    """Read a message, stream the reply, repeat; returns on /exit, /quit, EOF or Ctrl-C at the prompt.

    Ctrl-C while a reply is streaming stops that reply only; the unanswered message is dropped from
    the history so the next turn does not see a half conversation.
    """
    history: list[dict[str, str]] = []
    print_fn(HELP)
    while True:
        try:
            line = input_fn(">>> ")
        except (EOFError, KeyboardInterrupt):
            print_fn()
            return
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, arg = text.partition(" ")
            command = command.lower()
            if command in ("/exit", "/quit"):
                return
            if command == "/reset":
                history.clear()
                print_fn("(conversation cleared)")
            elif command == "/system":
                system = arg.strip() or None
                print_fn(f"(system prompt set: {system})" if system else "(system prompt removed)")
            else:
                print_fn(HELP)
            continue

        history.append({"role": "user", "content": text})
        conversation = with_system(history, system)
        pieces: list[str] = []
        stream = stream_reply(model, tokenizer, conversation, options)
        try:
            for piece in stream:
                pieces.append(piece)
                print_fn(piece, end="", flush=True)
        except KeyboardInterrupt:
            stream.close()  # stops generation in its thread
            history.pop()
            print_fn("\n(reply interrupted)")
            continue
        print_fn()
        history.append({"role": "assistant", "content": "".join(pieces)})
