"""An Ollama `Modelfile` beside an exported GGUF, so `ollama create NAME -f Modelfile` just works.

Ollama formats a chat with a Go template, not the Jinja chat template the model was trained with.
We convert only what we can prove equal: a template is treated as ChatML (SmolLM2, Qwen2/2.5)
when rendering test conversations through it gives exactly the ChatML text, and its default system
prompt (the one it inserts when the user gives none) is found the same way and written as SYSTEM.
Any other template gets no TEMPLATE line and a comment saying so, rather than a guess that would
make the model answer off-format.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError
from lmtune.models.gguf_import import end_of_turn_id

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Ollama's Go template for ChatML. System text comes from .System (a request's system message, else
# the Modelfile's SYSTEM); a last assistant message is left open so Ollama can continue it.
CHATML_OLLAMA_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""


def write_modelfile(gguf_path: str | Path, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write `out_dir/Modelfile` for `gguf_path` and return its path."""
    gguf = Path(gguf_path).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve()
    if out.is_file():
        raise ConfigError(f"{out} is a file; pass the folder to write the Modelfile into.")
    out.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(gguf, out)
    source = f"./{relative}" if not relative.startswith("..") else str(gguf)

    lines = [f"FROM {source}", ""]
    chatml = chatml_default_system(tokenizer)
    if chatml is not None:
        has_default, default_system = chatml
        lines += [
            "# Chat format: ChatML, converted from the model's chat template.",
            f'TEMPLATE """{CHATML_OLLAMA_TEMPLATE}"""',
        ]
        if has_default and '"""' not in default_system:
            lines += [
                "",
                "# The chat template's default system prompt (used when a request sends none).",
                f'SYSTEM """{default_system}"""',
            ]
    elif getattr(tokenizer, "chat_template", None):
        lines += [
            "# TEMPLATE not written: this model's chat template is not ChatML, and lmtune converts only",
            "# ChatML to Ollama's Go template. Ollama falls back to its own reading of the chat template",
            "# stored in the GGUF; check it with `ollama show --template NAME` and add a TEMPLATE if needed.",
        ]
    else:
        lines += ["# No chat template: the model is used for plain text completion."]
    stops = _stop_tokens(tokenizer, chatml is not None)
    if stops:
        lines += ["", "# Stop at the end of the assistant's turn."]
        lines += [f'PARAMETER stop "{token}"' for token in stops]
    path = out / "Modelfile"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def chatml_default_system(tokenizer: Any) -> tuple[bool, str] | None:
    """(has a default system prompt, its text) when the chat template renders exactly ChatML, else None.

    Checked by rendering: a system + user + assistant conversation, and a user / assistant / user
    conversation with the generation prompt, must give the ChatML text character for character;
    whatever the template adds before the first user turn when no system message is given must be
    one ChatML system block, whose content is the default.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None

    def block(role: str, content: str) -> str:
        return f"{IM_START}{role}\n{content}{IM_END}\n"

    def render(messages: list[dict[str, str]], prompt: bool) -> str | None:
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        except Exception:  # a template that rejects a plain conversation is not ChatML
            return None
        return text if isinstance(text, str) else None

    system, user, reply, second = (
        "lmtune system words",
        "lmtune user words",
        "lmtune reply words",
        "lmtune again",
    )
    with_system = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    full = render([*with_system, {"role": "assistant", "content": reply}], False)
    if full != block("system", system) + block("user", user) + block("assistant", reply):
        return None
    turns = [
        {"role": "user", "content": user},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": second},
    ]
    text = render(turns, True)
    tail = block("user", user) + block("assistant", reply) + block("user", second) + f"{IM_START}assistant\n"
    if text is None or not text.endswith(tail):
        return None
    prefix = text[: -len(tail)]
    if not prefix:
        return False, ""
    head = f"{IM_START}system\n"
    if prefix.startswith(head) and prefix.endswith(f"{IM_END}\n"):
        default = prefix[len(head) : -len(IM_END) - 1]
        if IM_START not in default and IM_END not in default:
            return True, default
    return None


def _stop_tokens(tokenizer: Any, chatml: bool) -> list[str]:
    """The end-of-turn token (and eos, if it differs); for ChatML also the start of a next turn."""
    ids = [end_of_turn_id(tokenizer), tokenizer.eos_token_id]
    tokens = [tokenizer.convert_ids_to_tokens(int(i)) for i in ids if i is not None]
    if chatml:
        tokens += [IM_END, IM_START]
    out: list[str] = []
    for token in tokens:
        if token and '"' not in token and token not in out:
            out.append(token)
    return out
