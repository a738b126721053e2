"""`lmtune serve`: an OpenAI-compatible HTTP API over one or more run directories or models."""

from __future__ import annotations

import sys

import typer

from lmtune.cli.infer_cmd import TARGET_HELP


def serve(
    targets: list[str] = typer.Argument(
        ..., metavar="TARGET...", help=TARGET_HELP + " Give several to serve them all at once."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (127.0.0.1: this machine only)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on (0: any free port)."),
    api_key: str | None = typer.Option(
        None,
        envvar="LMTUNE_API_KEY",
        help="Require 'Authorization: Bearer KEY' on every request (the env var keeps it out of `ps`).",
    ),
    name: list[str] | None = typer.Option(
        None, "--name", help="Model id for each TARGET, in order (default: the run directory or model name)."
    ),
    max_tokens_limit: int = typer.Option(2048, min=1, help="Most tokens one request may generate."),
    max_request_bytes: int = typer.Option(1_000_000, min=1, help="Largest request body accepted, in bytes."),
    read_timeout: float = typer.Option(
        30.0,
        min=0.001,
        help="Seconds a request's headers, and then its body, may take to arrive (slow clients are cut off).",
    ),
    max_batch: int = typer.Option(
        16, min=1, help="Most requests generating together per model (continuous batching)."
    ),
    max_queue: int = typer.Option(
        64, min=0, help="Most requests waiting for a batch row per model; beyond that: HTTP 429."
    ),
    dtype: str = typer.Option(
        "float32",
        help="float32 (answers as `lmtune chat` and eval do) or bfloat16 (half the memory; 2-3x faster "
        "prompts on CPUs with native bf16 and on GPUs). --engine vllm picks its own.",
    ),
    engine: str = typer.Option(
        "lmtune", help="lmtune (batching engine, runs anywhere) or vllm (hand the targets to vLLM's server)."
    ),
    merged_dir: str | None = typer.Option(
        None, help="--engine vllm: folder for the merged model when a run must be merged first."
    ),
    vllm_python: str | None = typer.Option(
        None,
        help="--engine vllm: the Python of the environment vLLM is installed in (default: this one). "
        "vLLM pins its own transformers, so it often lives in a virtual environment of its own.",
    ),
) -> None:
    """Serve models over HTTP with OpenAI's API: /v1/models, /v1/chat/completions, /v1/completions."""
    from lmtune.errors import ConfigError
    from lmtune.serve.server import load_slots
    from lmtune.serve.server import serve as run_server

    if api_key is not None and not api_key.strip():
        raise ConfigError("--api-key is empty: give a key, or leave the option out.")
    if engine not in ("lmtune", "vllm"):
        raise ConfigError(f"--engine {engine!r}: choose lmtune or vllm.")
    if engine == "vllm":
        from lmtune.serve.engine.vllm import plan_vllm, run_vllm

        plan = plan_vllm(
            targets,
            name,
            host=host,
            port=port,
            api_key=api_key,
            max_batch=max_batch,
            merged_dir=merged_dir,
            python=vllm_python or sys.executable,
        )
        raise typer.Exit(run_vllm(plan, echo=typer.echo))
    slots = load_slots(targets, name, max_batch=max_batch, max_queue=max_queue, dtype=dtype)
    run_server(
        slots,
        host=host,
        port=port,
        api_key=api_key,
        max_tokens_limit=max_tokens_limit,
        max_request_bytes=max_request_bytes,
        read_timeout=read_timeout,
        echo=lambda text: typer.echo(text, err=False),
    )
