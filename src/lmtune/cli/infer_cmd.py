"""`lmtune chat` and `lmtune generate`: talk to a run directory, model id, folder or .gguf."""

from __future__ import annotations

import typer

TARGET_HELP = "A run directory, a model alias, a Hugging Face id, a model folder or a .gguf file."


def _options(max_new_tokens: int, temperature: float, top_p: float, seed: int | None):
    from lmtune.infer.generate import GenerationOptions

    return GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)


def chat(
    target: str = typer.Argument(..., help=TARGET_HELP),
    system: str | None = typer.Option(None, help="System prompt."),
    max_new_tokens: int = typer.Option(256, help="Longest reply in tokens."),
    temperature: float = typer.Option(0.0, help="0 = greedy; higher = more random."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass (with temperature > 0)."),
    seed: int | None = typer.Option(None, help="Seed for sampling."),
) -> None:
    """Interactive terminal chat with the same chat template the run was trained with."""
    from lmtune.infer.chat import chat_loop
    from lmtune.run.load import load_target, require_generative

    require_generative(target, "chat")
    loaded = load_target(target)
    typer.echo(f"Chatting with {loaded.name}.")
    chat_loop(
        loaded.model,
        loaded.tokenizer,
        options=_options(max_new_tokens, temperature, top_p, seed),
        system=system,
    )


def generate(
    target: str = typer.Argument(..., help=TARGET_HELP),
    prompt: list[str] = typer.Option(
        ..., "--prompt", "-p", help="User message (repeat for several prompts)."
    ),
    system: str | None = typer.Option(None, help="System prompt."),
    max_new_tokens: int = typer.Option(128, help="Longest reply in tokens."),
    temperature: float = typer.Option(0.0, help="0 = greedy; higher = more random."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass (with temperature > 0)."),
    seed: int | None = typer.Option(None, help="Seed for sampling."),
) -> None:
    """Answer one or more prompts and print the replies (greedy by default)."""
    from lmtune.infer.generate import generate_replies, with_system
    from lmtune.run.load import load_target, require_generative

    require_generative(target, "generate")
    loaded = load_target(target, quiet=True)
    convs = [with_system([{"role": "user", "content": p}], system) for p in prompt]
    replies = generate_replies(
        loaded.model, loaded.tokenizer, convs, _options(max_new_tokens, temperature, top_p, seed)
    )
    for p, r in zip(prompt, replies):
        if len(prompt) > 1:
            typer.echo(f"> {p}")
        typer.echo(r)
