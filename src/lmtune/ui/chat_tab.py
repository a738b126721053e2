"""Chat tab: `lmtune chat` in the page, streamed, optionally base and tuned side by side.

Replies come from `lmtune.infer.generate.stream_reply`, which renders the conversation with the
model's own chat template (the one the run trained with), as the terminal chat and the server do.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError
from lmtune.run.layout import is_run_dir, read_marker

_MODELS: dict[str, Any] = {}
_LOCK = threading.Lock()


def resolve_target(target: str, root: str | Path) -> str:
    """A run directory or model folder typed relative to the working directory, else as given
    (an alias or hub id)."""
    target = (target or "").strip()
    if not target:
        raise ConfigError("Pick a run or type a model (alias, model folder or .gguf) first.")
    local = Path(root) / target
    return str(local) if local.exists() else target


def base_of(target: str) -> str:
    """The base model of a run directory (what it was fine-tuned from)."""
    if not is_run_dir(target):
        raise ConfigError(f"{target} is not a run directory, so it has no base model to compare with.")
    return str(read_marker(target)["base_model"])


def loaded(target: str) -> Any:
    """The model and tokenizer for `target`, loaded once (as `lmtune chat TARGET` loads them)."""
    from lmtune.run.load import load_target, require_generative

    with _LOCK:
        if target not in _MODELS:
            require_generative(target, "chat")
            _MODELS[target] = load_target(target, quiet=True)
        return _MODELS[target]


def forget_models() -> None:
    """Drop loaded models (a run was retrained)."""
    with _LOCK:
        _MODELS.clear()


def stream_chat(
    target: str,
    history: list[dict[str, str]],
    message: str,
    *,
    system: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
) -> Iterator[list[dict[str, str]]]:
    """Yield the history with the assistant's reply growing piece by piece."""
    from lmtune.infer.generate import GenerationOptions, stream_reply, with_system

    text = (message or "").strip()
    if not text:
        raise ConfigError("Type a message first.")
    convo = [
        {"role": m["role"], "content": _text(m["content"])}
        for m in history
        if m.get("role") in ("user", "assistant")
    ]
    convo.append({"role": "user", "content": text})
    shown = [*convo, {"role": "assistant", "content": ""}]
    yield list(shown)
    model = loaded(target)
    options = GenerationOptions(max_new_tokens=int(max_new_tokens), temperature=float(temperature))
    reply = ""
    for piece in stream_reply(model.model, model.tokenizer, with_system(convo, system or None), options):
        reply += piece
        shown[-1] = {"role": "assistant", "content": reply}
        yield list(shown)
    shown[-1] = {"role": "assistant", "content": reply}
    yield list(shown)


def _text(content: Any) -> str:
    """A Chatbot message's content as plain text: Gradio 6 hands earlier turns back as a list of
    parts ([{"type": "text", "text": ...}]), not the string it was given."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return "".join(_text(part) for part in content or [])


def chat_command(target: str, system: str | None, max_new_tokens: int, temperature: float) -> str:
    cmd = f"lmtune chat {target} --max-new-tokens {int(max_new_tokens)}"
    if float(temperature) > 0:
        cmd += f" --temperature {temperature}"
    if system:
        cmd += f' --system "{system}"'
    return cmd
