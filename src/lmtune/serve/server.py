"""Load the targets once, bind the socket, say how to call the server, and run uvicorn.

The socket is bound here (not by uvicorn) so that a port in use is one clear sentence, and so the
printed URL has the real port. Binding to loopback is the default; serving on another address
without an API key is allowed but warned about.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError
from lmtune.serve.engine import ModelSlot
from lmtune.serve.engine.slot import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE
from lmtune.serve.timeouts import DEFAULT_READ_TIMEOUT, timed_h11


def load_slots(
    targets: Sequence[str],
    names: Sequence[str] | None = None,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_queue: int = DEFAULT_MAX_QUEUE,
    dtype: str = "float32",
) -> list[ModelSlot]:
    """Each target loaded once; its id is its --name, else the run directory's or model's name.
    LoRA runs on one base share one copy of it and one batch (engine/adapters.py). `dtype`
    bfloat16 casts each loaded model (adapters included) after loading: half the memory, and on
    CPUs with native bf16 (AVX512-BF16, AMX) or GPUs a 2-3x faster prompt pass; float32 (the
    default) answers exactly as training's evaluation and `lmtune chat` do."""
    from lmtune.run.load import load_target, require_generative
    from lmtune.serve.engine.adapters import adapter_bytes, add_adapter, group_targets

    names = list(names or [])
    if names and len(names) != len(targets):
        raise ConfigError(
            f"Got {len(names)} --name for {len(targets)} targets: give one --name per target, in order, or none."
        )
    if any(not n.strip() for n in names):
        raise ConfigError("A --name cannot be empty.")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose {' or '.join(DTYPES)}.")
    for target in targets:  # before loading anything: a classification run cannot write text
        require_generative(target, "serve")
    found: dict[int, ModelSlot] = {}
    for group in group_targets(list(targets)):
        first = group.targets[0]
        loaded = load_target(targets[first], quiet=True)
        shared = len(group.targets) > 1
        slot = ModelSlot(
            names[first] if names else loaded.name,
            loaded.model,
            loaded.tokenizer,
            source=targets[first],
            adapter="default" if shared else None,
            max_batch=max_batch,
            max_queue=max_queue,
        )
        found[first] = slot
        if not shared:
            _cast(loaded.model, dtype)
            continue
        others: list[tuple[ModelSlot, str]] = []
        for i in group.targets[1:]:
            name = f"adapter{i}"
            add_adapter(loaded.model, targets[i], name)
            other = ModelSlot(
                names[i] if names else Path(targets[i]).name,
                loaded.model,
                _run_tokenizer(targets[i]),
                source=targets[i],
                scheduler=slot.scheduler,
                adapter=name,
            )
            others.append((other, name))
            found[i] = other
        _cast(loaded.model, dtype)  # after every adapter is on: they share the base's dtype
        slot.note = f"  (LoRA; base loaded once, adapter {_mib(adapter_bytes(loaded.model, 'default'))})"
        for other, name in others:  # each adapter's memory as served (after the cast)
            other.note = f"  (LoRA on {slot.id}'s base: +{_mib(adapter_bytes(loaded.model, name))})"
    slots: list[ModelSlot] = []
    for i in range(len(targets)):
        if any(s.id == found[i].id for s in slots):
            raise ConfigError(
                f"Two targets would both be served as model {found[i].id!r}: give each a --name, in order."
            )
        slots.append(found[i])
    return slots


DTYPES = ("float32", "bfloat16")


def _cast(model: Any, dtype: str) -> None:
    if dtype != "float32":
        import torch

        model.to(getattr(torch, dtype))


def _run_tokenizer(run_dir: str) -> object:
    """The tokenizer (and chat template) a run directory saved: the one it was trained with."""
    from lmtune.models.load import load_tokenizer
    from lmtune.models.resolve import ModelRef

    path = Path(run_dir)
    return load_tokenizer(
        ModelRef(spec=run_dir, kind="folder", path=run_dir, gguf_file=None, display=path.name)
    )


def _mib(size: int) -> str:
    return f"{size / 2**20:.2f} MiB"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0 picks a free one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise ConfigError(f"Cannot use --host {host!r}: {err}.") from err
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise ConfigError(
            f"Cannot listen on {host}:{port} ({err.strerror or err}): is another server using that port? "
            "Choose another with --port."
        ) from err
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def banner(slots: Sequence[ModelSlot], base_url: str, *, api_key: bool, host: str) -> str:
    """What the user reads at startup: the models, the URL, and a curl and an openai-client call."""
    width = max(len(s.id) for s in slots)
    lines = [f"Serving {len(slots)} model(s) at {base_url} (OpenAI-compatible API; Ctrl+C stops):"]
    lines += [f"  {s.id:<{width}}  <- {s.source}{s.note}" for s in slots]
    batch = slots[0].scheduler
    lines.append(f"Batching up to {batch.max_batch} requests per model; up to {batch.max_queue} more wait.")
    body = json.dumps({"model": slots[0].id, "messages": [{"role": "user", "content": "Hello!"}]})
    auth = ' -H "Authorization: Bearer $LMTUNE_API_KEY"' if api_key else ""
    key = "YOUR_KEY" if api_key else "unused"
    call = f'model="{slots[0].id}", messages=[{{"role": "user", "content": "Hello!"}}]'
    lines += [
        "Try:",
        f"  curl {base_url}/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'",
        f'  OpenAI(base_url="{base_url}", api_key="{key}").chat.completions.create({call})  # pip install openai',
    ]
    if not api_key and not is_loopback(host):
        lines.append(
            f"warning: listening on {host} without --api-key: anyone who can reach this port can use the "
            "models. Set --api-key (or LMTUNE_API_KEY), or bind 127.0.0.1."
        )
    return "\n".join(lines)


def serve(
    slots: Sequence[ModelSlot],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_tokens_limit: int = 2048,
    max_request_bytes: int = 1_000_000,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    echo: Callable[[str], None] = print,
) -> None:
    """Run the server until interrupted."""
    import uvicorn

    from lmtune.serve.app import create_app

    if api_key is not None and not api_key.strip():
        raise ConfigError("--api-key is empty: give a key, or leave the option out.")
    if read_timeout <= 0:
        raise ConfigError(f"--read-timeout must be a positive number of seconds, got {read_timeout}.")
    app = create_app(
        slots,
        api_key=api_key,
        max_tokens_limit=max_tokens_limit,
        max_request_bytes=max_request_bytes,
        read_timeout=read_timeout,
    )
    sock = bind(host, port)
    actual_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    echo(banner(slots, f"http://{shown}:{actual_port}/v1", api_key=api_key is not None, host=host))
    uvicorn.Server(uvicorn_config(app, read_timeout=read_timeout)).run(sockets=[sock])


def uvicorn_config(app: Any, *, read_timeout: float = DEFAULT_READ_TIMEOUT, log_level: str = "info") -> Any:
    """Uvicorn's settings for `app`: the h11 protocol with header timeouts (timeouts.py)."""
    import uvicorn

    return uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5, http=timed_h11(read_timeout))
