"""The GPU plan `lmtune estimate` prints: memory per device per strategy, whether it fits each GPU
type, step and total time, cost, and the cheapest GPU that fits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.plan.estimate import _estimate, model_shape, model_spec
from lmtune.plan.hardware import Gpu, Prices
from lmtune.plan.scale import (
    DeviceMemory,
    Flops,
    GpuPlan,
    Strategy,
    configured_strategy,
    flops_per_token,
    gathered_unit,
    per_device,
    plan_gpu,
    with_attention_for_gpu,
)
from lmtune.plan.source import model_source
from lmtune.train.plan import PROMPT_LEARNING

BYTES_PER_TOKEN = 4  # characters of English text per token, for sizing a dataset from its file


@dataclass
class Plan:
    cfg: Any
    world: int
    nodes: int
    strategies: list[Strategy]
    rows_off: list[DeviceMemory]
    rows_on: list[DeviceMemory]
    gpus: list[GpuPlan]
    flops: tuple[Flops, Flops]
    step_tokens: int  # per GPU per optimizer step
    total_tokens: int
    tokens_from: str
    prices: Prices
    configured: Strategy | None

    def recommended(self) -> GpuPlan | None:
        """The cheapest GPU type that fits (per million tokens), ties to the faster."""
        fitting = [g for g in self.gpus if g.chosen is not None and g.cost_per_million is not None]
        return min(fitting, key=lambda g: (round(g.cost_per_million or 0, 6), g.step_seconds), default=None)


def build_plan(
    cfg: Any,
    *,
    gpus: list[Gpu],
    nproc: int,
    nodes: int,
    strategies: list[Strategy],
    prices: Prices,
    tokens: int | None = None,
) -> Plan:
    world = nproc * nodes
    gpu_cfg = with_attention_for_gpu(cfg)
    source = model_source(gpu_cfg)
    spec = model_spec(gpu_cfg, source)
    shape = model_shape(source.config)
    off = _estimate(gpu_cfg, spec, source, device="cuda", bf16=True, ckpt=False)
    on = _estimate(gpu_cfg, spec, source, device="cuda", bf16=True, ckpt=True)
    unit = gathered_unit(spec, shape, off.weights)
    rows_off = [per_device(off, s, world, unit) for s in strategies]
    rows_on = [per_device(on, s, world, unit) for s in strategies]
    seq = cfg.data.max_length + (cfg.method.num_virtual_tokens if cfg.method.name in PROMPT_LEARNING else 0)
    flops = (
        flops_per_token(spec, shape, seq=seq, method=cfg.method.name, ckpt=False),
        flops_per_token(spec, shape, seq=seq, method=cfg.method.name, ckpt=True),
    )
    step_tokens = off.tokens_per_step * cfg.train.grad_accum
    total, tokens_from = training_tokens(cfg, step_tokens * world, tokens)
    plans = [
        plan_gpu(
            g,
            world,
            rows_off,
            rows_on,
            flops=flops,
            step_tokens=step_tokens,
            total_tokens=total,
            price=prices.per_gpu_hour.get(g.key),
        )
        for g in gpus
    ]
    return Plan(
        cfg, world, nodes, strategies, rows_off, rows_on, plans, flops, step_tokens, total, tokens_from, prices,
        configured_strategy(cfg),
    )  # fmt: skip


def training_tokens(cfg: Any, global_step_tokens: int, given: int | None) -> tuple[int, str]:
    """Tokens the whole run trains on, and where the number comes from."""
    if given:
        return given, "--tokens"
    t = cfg.train
    if t.max_steps and t.max_steps > 0:
        return (
            t.max_steps * global_step_tokens,
            f"train.max_steps {t.max_steps} x {global_step_tokens:,} a step",
        )
    path = Path(str(cfg.data.path or ""))
    files = (
        sorted(p for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else [path]
        if path.is_file()
        else []
    )
    size = sum(p.stat().st_size for p in files)
    if not size:
        return 0, "unknown (pass --tokens N for the total time and cost)"
    tokens = int(size / BYTES_PER_TOKEN * t.epochs)
    return tokens, f"data file size / {BYTES_PER_TOKEN} bytes a token x {t.epochs:g} epochs (--tokens to set)"


# -- rendering ---------------------------------------------------------------------------------------
def render_plan(plan: Plan) -> str:
    cfg = plan.cfg
    gib = 2**30
    lines = [
        f"GPU plan: {cfg.model.name}, method {cfg.method.name}, {plan.nodes} node(s) x "
        f"{plan.world // plan.nodes} GPU(s) = world size {plan.world}; per GPU {cfg.train.batch_size} rows x "
        f"{cfg.data.max_length} tokens, grad_accum {cfg.train.grad_accum} "
        f"(global batch {plan.step_tokens * plan.world:,} tokens); bf16, flash attention",
        "",
        "Memory per GPU (GiB), without gradient checkpointing; host = CPU memory per process for offload",
    ]
    names = [g.gpu.name for g in plan.gpus]
    header = ["strategy", "weights", "grads", "optim", "activ", "total", "host", *names]
    table = []
    for off, on in zip(plan.rows_off, plan.rows_on, strict=True):
        mark = " *" if plan.configured and plan.configured.key == off.strategy.key else ""
        cells = [
            _name(off.strategy, plan.world) + mark,
            *(
                f"{x / gib:.2f}"
                for x in (off.weights, off.gradients, off.optimizer, off.activations, off.total)
            ),
            f"{off.host / gib:.2f}" if off.host else "-",
        ]
        for g in plan.gpus:
            if off.total <= g.gpu.memory:
                cells.append("fits")
            elif on.total <= g.gpu.memory:
                cells.append("ckpt")
            else:
                cells.append("no")
        table.append(cells)
    lines += _table(header, table)
    lines.append(
        "  fits: as is; ckpt: only with gradient checkpointing "
        f"(activations {plan.rows_on[0].activations / gib:.2f} GiB then); no: does not fit"
    )
    if plan.configured:
        lines.append("  *: the strategy the config's distributed section asks for")
    lines += ["", f"Time and cost (first strategy that fits, in the order above; {plan.tokens_from}):"]
    lines.append(f"  FLOPs per token: {plan.flops[0].per_token / 1e9:,.2f} GFLOP = {plan.flops[0].formula}")
    total = f"{_count(plan.total_tokens)} tokens" if plan.total_tokens else "tokens unknown"
    rows = []
    for g in plan.gpus:
        if g.chosen is None:
            rows.append([g.gpu.name, "does not fit", "-", "-", "-", "-", _money(g.price), "-"])
            continue
        ckpt = " +ckpt" if g.chosen.gradient_checkpointing else ""
        rows.append(
            [
                g.gpu.name,
                _name(g.chosen.strategy, plan.world) + ckpt,
                f"{g.gpu.bf16_tflops:g} x {g.gpu.mfu:.0%}",
                _duration(g.step_seconds),
                _duration(g.hours * 3600) if plan.total_tokens else "-",
                _money(g.cost_per_million, 3),
                _money(g.price),
                _money(g.cost) if g.cost is not None else "-",
            ]
        )
    lines += _table(
        ["GPU", "strategy", "TFLOP/s x MFU", "step", f"total ({total})", "$/1M tok", "$/GPU-h", "cost"], rows
    )
    best = plan.recommended()
    if best is not None and best.chosen is not None:
        cost = f", {_money(best.cost)} in {_duration(best.hours * 3600)}" if best.cost is not None else ""
        lines.append(
            f"\nRecommended: {best.gpu.name} x {plan.world} with {_name(best.chosen.strategy, plan.world)}"
            f"{' and gradient checkpointing' if best.chosen.gradient_checkpointing else ''}: the cheapest "
            f"that fits ({_money(best.cost_per_million, 3)} per 1M tokens{cost})."
        )
    else:
        lines.append("\nNo GPU type listed fits: more GPUs (--nproc/--nodes), a sharded strategy, or QLoRA.")
    lines.append(
        f"Prices: {plan.prices.file}, dated {plan.prices.date} ({plan.prices.source}); --prices FILE to use yours. "
        "Time assumes the MFU shown; communication and offload traffic are not in it."
    )
    return "\n".join(lines)


def _name(strategy: Strategy, world: int) -> str:
    return "1 GPU, no DDP" if strategy.key == "ddp" and world == 1 else strategy.name


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = [(str.ljust if i == 0 else str.rjust) for i in range(len(header))]
    return [
        "  " + "  ".join(f(str(c), w) for f, c, w in zip(fmt, r, widths, strict=True))
        for r in [header, *rows]
    ]


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:,.1f}{unit}"
    return f"{n:,.0f}"


def _money(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"${x:,.{digits}f}" if x >= 0.01 or x == 0 else f"${x:.2g}"
