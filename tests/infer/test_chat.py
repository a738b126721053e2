"""Terminal chat: history kept and cleared, commands, clean endings, driven by scripted input."""

from __future__ import annotations

import pytest

from lmtune.infer.chat import chat_loop
from lmtune.infer.generate import GenerationOptions, generate_replies

OPTIONS = GenerationOptions(max_new_tokens=8)


@pytest.fixture
def rendered(tiny_model_and_tokenizer, monkeypatch):
    """Every conversation the chat renders for the model, recorded at the chat-template step."""
    _, tok = tiny_model_and_tokenizer
    seen: list[list[dict]] = []
    real = tok.apply_chat_template

    def wrapper(conversation, *args, **kwargs):
        seen.append([dict(m) for m in conversation])
        return real(conversation, *args, **kwargs)

    monkeypatch.setattr(tok, "apply_chat_template", wrapper)
    return seen


def script(*lines):
    """An input_fn that returns the given lines in order; an exception instance is raised instead."""
    queue = list(lines)

    def input_fn(prompt: str = "") -> str:
        item = queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    return input_fn, queue


class Printed:
    def __init__(self) -> None:
        self.text = ""

    def __call__(self, *args, end: str = "\n", flush: bool = False) -> None:
        self.text += " ".join(str(a) for a in args) + end


def run(tiny_model_and_tokenizer, *lines, **kwargs):
    model, tok = tiny_model_and_tokenizer
    input_fn, queue = script(*lines)
    out = Printed()
    chat_loop(model, tok, options=OPTIONS, input_fn=input_fn, print_fn=out, **kwargs)
    return out, queue


def user(text):
    return {"role": "user", "content": text}


def test_history_is_kept_between_turns(tiny_model_and_tokenizer, rendered):
    model, tok = tiny_model_and_tokenizer
    out, queue = run(tiny_model_and_tokenizer, "hello", "hi", "/exit")
    assert not queue
    first_reply = generate_replies(model, tok, [[user("hello")]], OPTIONS)[0]
    assert first_reply and first_reply in out.text
    assert rendered[0] == [user("hello")]
    assert rendered[1] == [user("hello"), {"role": "assistant", "content": first_reply}, user("hi")]


def test_reset_clears_history(tiny_model_and_tokenizer, rendered):
    out, queue = run(tiny_model_and_tokenizer, "hello", "/reset", "hi", "/exit")
    assert not queue
    assert rendered == [[user("hello")], [user("hi")]]
    assert "cleared" in out.text


def test_system_command_sets_the_system_prompt(tiny_model_and_tokenizer, rendered):
    _, tok = tiny_model_and_tokenizer
    run(tiny_model_and_tokenizer, "/system You are terse.", "hello", "/system", "hi", EOFError())
    assert rendered[0] == [{"role": "system", "content": "You are terse."}, user("hello")]
    assert rendered[1][0]["role"] == "user"  # "/system" alone removes it; history is kept
    assert len(rendered[1]) == 3


def test_system_argument_is_used_from_the_start(tiny_model_and_tokenizer, rendered):
    run(tiny_model_and_tokenizer, "hello", "/quit", system="Be kind.")
    assert rendered == [[{"role": "system", "content": "Be kind."}, user("hello")]]


@pytest.mark.parametrize("ending", [EOFError(), KeyboardInterrupt()])
def test_eof_and_ctrl_c_at_the_prompt_end_cleanly(tiny_model_and_tokenizer, rendered, ending):
    out, queue = run(tiny_model_and_tokenizer, "", "hello", ending, "never read")
    assert queue == ["never read"]
    assert len(rendered) == 1  # the blank line was skipped, not sent


def test_unknown_command_shows_help_without_calling_the_model(tiny_model_and_tokenizer, rendered):
    out, _ = run(tiny_model_and_tokenizer, "/what", "/exit")
    assert rendered == []
    assert out.text.count("/reset") == 2  # the greeting and the reply to /what


def test_ctrl_c_during_a_reply_drops_that_turn(tiny_model_and_tokenizer, rendered):
    model, tok = tiny_model_and_tokenizer
    input_fn, _ = script("hello", "hi", "/exit")
    interrupted = []

    def print_fn(*args, end="\n", flush=False):
        if end == "" and not interrupted:  # the first streamed piece
            interrupted.append(True)
            raise KeyboardInterrupt

    chat_loop(model, tok, options=OPTIONS, input_fn=input_fn, print_fn=print_fn)
    assert interrupted
    assert rendered == [[user("hello")], [user("hi")]]
