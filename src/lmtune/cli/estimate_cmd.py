"""`lmtune estimate CONFIG`: the memory a training run will need, before it starts.

Prints the parts (weights, gradients, optimizer state, activations with and without gradient
checkpointing, output head and loss, runtime overhead), the predicted peak, whether it fits the
machine's available memory (or --memory), and when it does not, what to change: each suggestion
applies on top of the ones before it, with the peak it predicts, until one fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from lmtune.errors import ConfigError


@dataclass
class Suggestion:
    what: str
    overrides: list[str]  # every --set so far: this suggestion's and those before it
    peak: int
    fits: bool


def estimate(
    config: Path = typer.Argument(..., help="YAML config file (see `lmtune config schema`)."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a config value, e.g. --set train.batch_size=8 (repeatable)."
    ),
    memory: str | None = typer.Option(
        None,
        "--memory",
        help="Memory to fit in: 24GB, 24GiB, 512MB, 1.5G. Default: what the device has available now.",
    ),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available, else cpu), cpu or cuda."),
    gpu: list[str] = typer.Option(
        [], "--gpu", help="GPU types to compare, e.g. --gpu l4,a100-80g,h100 (default: all in the table)."
    ),
    nproc: int | None = typer.Option(
        None, "--nproc", min=1, help="GPUs per node (default: the config's distributed section, else 1)."
    ),
    nodes: int | None = typer.Option(
        None, "--nodes", min=1, help="Nodes (default: the config's distributed section, else 1)."
    ),
    strategy: str | None = typer.Option(
        None, "--strategy", help="Only this strategy's rows: ddp, deepspeed or fsdp (default: all)."
    ),
    zero_stage: int | None = typer.Option(None, "--zero-stage", min=1, max=3, help="Only this ZeRO stage."),
    offload: str | None = typer.Option(
        None, "--offload", help="Only rows with this CPU offload: none, optimizer or params."
    ),
    prices: Path | None = typer.Option(
        None, "--prices", help="YAML price table (per_gpu_hour: {h100: 2.49, ...}) over the shipped one."
    ),
    tokens: int | None = typer.Option(
        None, "--tokens", min=1, help="Tokens the whole run trains on (default: from the data file's size)."
    ),
    plan: bool = typer.Option(True, "--plan/--no-plan", help="Print the GPU plan (memory, time, cost)."),
) -> None:
    """Predict a training run's peak memory here, and per GPU type, strategy and world size: memory,
    time and cost, with the cheapest GPU that fits."""
    from lmtune.config.loader import load_config
    from lmtune.plan.estimate import estimate_memory, resolve_device_light
    from lmtune.plan.memory import available_memory, parse_memory

    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device '{device}' is not one of auto, cpu, cuda.")
    limit = parse_memory(memory) if memory is not None else None  # a bad size fails before any work
    plan_options = _plan_options(gpu, strategy, offload, prices) if plan else None
    cfg = load_config(config, set_)
    device = resolve_device_light(cfg.model.device if device == "auto" else device)
    source = f"--memory {memory}" if memory is not None else f"available on {device} now"
    limit = limit if limit is not None else available_memory(device)

    without = estimate_memory(cfg, gradient_checkpointing=False, device=device)
    with_ckpt = estimate_memory(cfg, gradient_checkpointing=True, device=device)
    setting = cfg.train.gradient_checkpointing
    if setting == "auto":
        ckpt = not without.fits(limit) and cfg.method.name != "prefix"
        ckpt_line = f"auto -> {'on' if ckpt else 'off'}"
    else:
        ckpt, ckpt_line = bool(setting), f"{'on' if setting else 'off'} (train.gradient_checkpointing)"
    chosen = with_ckpt if ckpt else without
    typer.echo(
        render(
            cfg, chosen, without, with_ckpt, device=device, limit=limit, source=source, ckpt_line=ckpt_line
        )
    )
    _advise(cfg, chosen, limit, ckpt=ckpt, setting=setting, device=device)
    if plan_options is not None:
        from lmtune.plan.report import build_plan, render_plan
        from lmtune.plan.scale import select_strategies

        gpus, price_table = plan_options
        rows = select_strategies(strategy, zero_stage, offload)
        if not rows:
            raise ConfigError(
                f"No strategy matches --strategy {strategy} --zero-stage {zero_stage} --offload {offload} "
                "(ZeRO stages belong to --strategy deepspeed; FSDP offloads everything: --offload params)."
            )
        dist = getattr(cfg, "distributed", None)  # the section another version of the schema adds
        nproc = nproc or _positive(getattr(dist, "nproc", None)) or 1
        nodes = nodes or _positive(getattr(dist, "nodes", None) or getattr(dist, "nnodes", None)) or 1
        built = build_plan(
            cfg, gpus=gpus, nproc=nproc, nodes=nodes, strategies=rows, prices=price_table, tokens=tokens
        )
        typer.echo("\n" + render_plan(built))


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _plan_options(gpu: list[str], strategy: str | None, offload: str | None, prices: Path | None) -> tuple:
    """The GPU list and price table, checked before any estimate is made."""
    from lmtune.plan.hardware import load_prices, pick_gpus

    if strategy is not None and strategy not in ("none", "ddp", "deepspeed", "fsdp"):
        raise ConfigError(f"--strategy '{strategy}' is not one of ddp, deepspeed, fsdp.")
    if offload is not None and offload not in ("none", "optimizer", "params"):
        raise ConfigError(f"--offload '{offload}' is not one of none, optimizer, params.")
    return pick_gpus(gpu), load_prices(prices)


def _advise(cfg: Any, chosen: Any, limit: int, *, ckpt: bool, setting: Any, device: str) -> None:
    """The note near the limit, or the suggestions when the run does not fit here."""
    if chosen.fits(limit):
        if chosen.peak > 0.75 * limit:
            typer.echo(
                "  note: close to the limit. The process's resident size can run up to ~30% above the "
                "predicted peak (glibc keeps freed blocks in its heap; see docs/estimate.md)."
            )
        return
    typer.echo(f"\nDoes not fit in {_fmt(limit)}. Suggestions, each on top of those before it:")
    if ckpt and setting == "auto":  # auto already turns it on: advise from there
        cfg = _with_overrides(cfg, ["train.gradient_checkpointing=true"]) or cfg
    advice = suggestions(cfg, limit, device=device)
    for i, s in enumerate(advice, 1):
        mark = "fits" if s.fits else "still too much"
        typer.echo(f"  {i}. {s.what}: peak {_fmt(s.peak)} ({mark})")
    if advice:
        typer.echo("  --set " + " --set ".join(advice[-1].overrides))
    if not advice or not advice[-1].fits:
        typer.echo("  None of these is enough: use a smaller model or a machine with more memory.")


def render(
    cfg: Any, e: Any, without: Any, with_ckpt: Any, *, device: str, limit: int, source: str, ckpt_line: str
) -> str:
    """The estimate as aligned lines (the numbers a user compares with `free -h` / nvidia-smi)."""
    share = 100 * e.trainable / e.parameters if e.parameters else 0.0
    rows = [
        ("parameters", f"{e.parameters:,} ({e.trainable:,} trainable, {share:.3f}%)"),
        (
            "tokens per step",
            f"{e.tokens_per_step:,} per forward pass (train.batch_size {cfg.train.batch_size})",
        ),
        ("weights", _fmt(e.weights)),
        ("gradients", _fmt(e.gradients)),
        ("optimizer state", f"{_fmt(e.optimizer)} ({cfg.train.optim})"),
        (
            "activations",
            f"{_fmt(without.activations)} without gradient checkpointing, "
            f"{_fmt(with_ckpt.activations)} with it",
        ),
        ("output head + loss", _fmt(e.loss) + (f" (train.loss_chunk {cfg.train.loss_chunk})")),
        ("runtime overhead", _fmt(e.overhead)),
        ("model loading", f"+{_fmt(e.loading)} above the weights, before training allocates"),
        ("gradient checkpointing", ckpt_line),
        ("predicted peak", _fmt(e.peak)),
        ("memory", f"{_fmt(limit)} ({source})"),
        ("fits", "yes" if e.fits(limit) else "NO"),
    ]
    width = max(len(k) for k, _ in rows)
    head = f"Memory estimate: {cfg.model.name}, task {cfg.task}, method {cfg.method.name}, {device}"
    lines = [head, *(f"  {k.ljust(width)}  {v}" for k, v in rows)]
    lines += [f"  note: {n}" for n in e.notes]
    return "\n".join(lines)


def suggestions(cfg: Any, limit: int, *, device: str | None = None) -> list[Suggestion]:
    """Changes that lower the peak, cheapest in speed or quality first; each is applied on top of
    the ones before it, and the list stops at the first that fits. Where a change has a size
    (batch, length), the largest that fits is chosen, else the smallest tried."""
    from lmtune.plan.estimate import estimate_memory

    t, method = cfg.train, cfg.method.name
    effective = t.batch_size * t.grad_accum
    steps: list[tuple[str, list[list[str]]]] = []
    if t.gradient_checkpointing is not True and method != "prefix":
        steps.append(("gradient checkpointing (~30% slower)", [["train.gradient_checkpointing=true"]]))
    steps.append(
        (
            "train.batch_size {0} with train.grad_accum {1} (same effective batch)",
            [
                [f"train.batch_size={b}", f"train.grad_accum={math.ceil(effective / b)}"]
                for b in _halvings(t.batch_size)
            ],
        )
    )
    steps.append(
        (
            "data.max_length {0} (longer samples are cut)",
            [[f"data.max_length={n}"] for n in _halvings(cfg.data.max_length, 128)],
        )
    )
    if method != "qlora":
        steps.append(("method qlora (LoRA on a 4-bit base; bitsandbytes)", [["method.name=qlora"]]))
    if t.optim == "adamw":
        steps.append(
            ("train.optim adamw_8bit (8-bit optimizer state; bitsandbytes)", [["train.optim=adamw_8bit"]])
        )

    out: list[Suggestion] = []
    applied: list[str] = []
    previous = estimate_memory(cfg, device=device).peak
    for what, candidates in steps:
        best = None
        for sets in candidates:  # mildest first
            new = _with_overrides(cfg, [*applied, *sets])
            if new is None:
                continue
            best = (sets, estimate_memory(new, device=device).peak)
            if best[1] <= limit:
                break
        if best is None:
            continue
        sets, peak = best
        if peak >= previous:  # no gain (the peak is elsewhere, e.g. while loading): not worth its cost
            continue
        previous = peak
        applied += sets
        values = [s.partition("=")[2] for s in sets]
        out.append(Suggestion(what.format(*values), list(applied), peak, peak <= limit))
        if peak <= limit:
            break
    return out


def _halvings(n: int, floor: int = 1) -> list[int]:
    out = []
    while n > floor:
        n = max(n // 2, floor)
        out.append(n)
    return out


def _with_overrides(cfg: Any, sets: list[str]) -> Any:
    """`cfg` with `--set` style overrides, or None when the result is not a valid config."""
    from lmtune.config.loader import apply_override, validate_config

    raw = cfg.model_dump(mode="json")
    raw["method"] = cfg.method.options()
    for item in sets:
        apply_override(raw, item)
    try:
        return validate_config(raw)
    except ConfigError:
        return None


def _fmt(n: int) -> str:
    from lmtune.plan.memory import format_bytes

    return format_bytes(n)
