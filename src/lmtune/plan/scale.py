"""Memory per GPU under each multi-GPU strategy, step time from FLOPs, and cost.

The single-process estimate (estimate.py, priced for a CUDA device in bf16) gives each term for one
process holding everything; a strategy divides some terms by the world size N:

    strategy                  weights  gradients  optimizer  on the host (per process)
    DDP                       W        G (+G)     O          -            (+G: DDP's gradient buckets)
    ZeRO-1                    W        G          O/N        -
    ZeRO-2                    W        G/N        O/N        -
    ZeRO-2 + offload opt      W        G/N        -          O/N + G/N
    ZeRO-3 / FSDP full shard  W/N + U  G/N        O/N        -
    ZeRO-3 + offload opt      W/N + U  G/N        -          O/N + G/N
    ZeRO-3 + offload all      U        G/N        -          W/N + O/N + G/N
    FSDP + CPU offload        U        -          -          W/N + O/N + G/N

U: the unit a sharded strategy gathers to compute with (the largest layer or the embedding, in
the weights' dtype), twice for prefetching the next one. Activations, loss buffers and the CUDA
context are per process and do not shrink. Each process runs `train.batch_size` rows (the
Trainer's per-device batch).

Time: FLOPs per trained token / (N x peak bf16 FLOP/s x MFU), with N the matmul parameters (the
layers' Linears and the output head; the embedding is a lookup), L layers, s the row length, d the
attention width:

    full fine-tuning:   6N + 6·L·s·d                                       (Kaplan et al. 2020)
    frozen base:        2N + 2·L·s·d  forward, everything
      (LoRA, QLoRA,   + 2N_f + 4·L_f·s·d  gradients of the inputs, through the layers from the
       freeze)                           first trained one up (N_f, L_f) and the head
                      + 2N_t          gradients of the trained weights
    checkpointing:    + 2N_f + 2·L_f·s·d  (the forward again, for the layers it recomputes)

Communication, CPU offload traffic and QLoRA's dequantisation are not in the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmtune.plan.hardware import Gpu


@dataclass(frozen=True)
class Strategy:
    key: str
    name: str
    shard_optimizer: bool = False
    shard_gradients: bool = False
    shard_weights: bool = False
    offload_optimizer: bool = False
    offload_weights: bool = False
    offload_gradients: bool = False  # FSDP's CPU offload keeps gradients on the host too
    family: str = "ddp"  # ddp | deepspeed | fsdp (what `distributed.strategy` calls it)
    zero_stage: int = 0


STRATEGIES = [
    Strategy("ddp", "DDP"),
    Strategy("zero1", "ZeRO-1", True, family="deepspeed", zero_stage=1),
    Strategy("zero2", "ZeRO-2", True, True, family="deepspeed", zero_stage=2),
    Strategy("zero2-offload", "ZeRO-2 + offload opt", True, True, offload_optimizer=True, family="deepspeed", zero_stage=2),
    Strategy("zero3", "ZeRO-3", True, True, True, family="deepspeed", zero_stage=3),
    Strategy("zero3-offload", "ZeRO-3 + offload opt", True, True, True, offload_optimizer=True, family="deepspeed", zero_stage=3),
    Strategy("zero3-offload-all", "ZeRO-3 + offload all", True, True, True, True, True, family="deepspeed", zero_stage=3),
    Strategy("fsdp", "FSDP full shard", True, True, True, family="fsdp"),
    Strategy("fsdp-offload", "FSDP + CPU offload", True, True, True, True, True, True, family="fsdp"),
]  # fmt: skip
# What the config's `distributed:` section or --strategy/--zero-stage/--offload name, as rows
_OFFLOAD = {"none": (False, False), "optimizer": (True, False), "params": (True, True), "all": (True, True)}


def select_strategies(strategy: str | None, zero_stage: int | None, offload: str | None) -> list[Strategy]:
    """The rows to show: all, or those matching the options given (each option narrows)."""
    rows = list(STRATEGIES)
    if strategy and strategy != "none":
        rows = [s for s in rows if s.family == strategy]
    if zero_stage is not None:
        rows = [s for s in rows if s.zero_stage == zero_stage]
    if offload is not None:
        opt, weights = _OFFLOAD[offload]
        rows = [s for s in rows if (s.offload_optimizer, s.offload_weights) == (opt, weights)]
    return rows


def configured_strategy(cfg: Any) -> Strategy | None:
    """The row the config's `distributed:` section (if this version has one) asks for."""
    dist = getattr(cfg, "distributed", None)
    name = getattr(dist, "strategy", None) if dist is not None else None
    if not name or name == "none":
        return None
    stage = getattr(dist, "zero_stage", None) if name == "deepspeed" else None
    opt, params = (
        bool(getattr(dist, "offload_optimizer", False)),
        bool(getattr(dist, "offload_params", False)),
    )
    offload = "params" if params else "optimizer" if opt else "none"
    rows = select_strategies(name, stage, offload)
    return rows[0] if rows else None


@dataclass
class DeviceMemory:
    """Bytes on each GPU (and in host memory per process) under one strategy."""

    strategy: Strategy
    weights: int
    gradients: int
    optimizer: int
    activations: int  # activations + loss buffers (per process, not sharded)
    overhead: int  # CUDA context
    host: int  # optimizer / weights / gradients offloaded to CPU memory, per process
    gradient_checkpointing: bool

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead


def per_device(e: Any, strategy: Strategy, world: int, unit: int) -> DeviceMemory:
    """Split one process's estimate `e` (priced on CUDA) across `world` processes."""
    n = max(world, 1)
    w, g, o = e.weights, e.gradients, e.optimizer
    weights = unit if strategy.offload_weights else (-(-w // n) + unit if strategy.shard_weights else w)
    grads = -(-g // n) if strategy.shard_gradients else g
    if strategy.key == "ddp" and n > 1:
        grads += g  # the flat gradient buckets all-reduce works on (gradient_as_bucket_view off)
    opt = -(-o // n) if strategy.shard_optimizer else o
    host = 0
    if strategy.offload_optimizer:
        host += opt + grads  # optimizer state and float32 gradients of this shard, on the host
        opt = 0
    if strategy.offload_gradients:
        grads = 0
    if strategy.offload_weights:
        host += -(-w // n)
    return DeviceMemory(
        strategy,
        weights,
        grads,
        opt,
        e.activations + e.loss,
        e.overhead,
        host,
        e.gradient_checkpointing,
    )


def gathered_unit(spec: Any, shape: Any, weights: int) -> int:
    """What a sharded strategy holds whole while it computes: the largest layer or the embedding,
    at the model's average bytes per weight, twice (the next one is prefetched)."""
    per_weight = weights / max(spec.total, 1)
    layer = max(
        (sum(x.in_features * x.out_features for x in layer.linears) for layer in spec.layers), default=0
    )
    return int(2 * max(layer, shape.vocab * shape.hidden) * per_weight)


# -- time -----------------------------------------------------------------------------------------------
@dataclass
class Flops:
    per_token: float
    formula: str


def flops_per_token(spec: Any, shape: Any, *, seq: int, method: str, ckpt: bool) -> Flops:
    """Training FLOPs per token (module docstring: the formulas)."""
    layer_n = [sum(x.in_features * x.out_features for x in layer.linears) for layer in spec.layers]
    head = spec.head_numel
    n = sum(layer_n) + head
    attn = 2 * seq * shape.q_dim  # one layer's forward attention per token (causal: half the row)
    layers = len(spec.layers) or shape.layers
    if method == "full":
        total = 6 * n + 3 * layers * attn
        formula = f"6N + 6·L·s·d with N={n / 1e6:,.1f}M, L={layers}, s={seq}, d={shape.q_dim}"
        flow_n, flow_l = n, layers
    else:
        first = next((i for i, layer in enumerate(spec.layers) if layer.trains), len(spec.layers))
        flow_n, flow_l = sum(layer_n[first:]) + head, layers - first
        total = 2 * n + layers * attn + 2 * flow_n + 2 * flow_l * attn + 2 * spec.trainable
        formula = (
            f"2N + 2·L·s·d + 2N_f + 4·L_f·s·d + 2N_t with N={n / 1e6:,.1f}M, N_f={flow_n / 1e6:,.1f}M, "
            f"N_t={spec.trainable / 1e6:,.2f}M, L={layers}, L_f={flow_l}, s={seq}, d={shape.q_dim}"
        )
    if ckpt:
        total += 2 * flow_n + flow_l * attn
        formula += " + 2N_f + 2·L_f·s·d (checkpointing)"
    return Flops(float(total), formula)


@dataclass
class GpuPlan:
    """One GPU type at one world size: each strategy's memory, and the time and cost of the first
    that fits (strategies in order of their communication: DDP first, offload last)."""

    gpu: Gpu
    world: int
    rows: list[DeviceMemory]
    fits: list[bool]
    chosen: DeviceMemory | None
    step_seconds: float = 0.0
    hours: float = 0.0  # for all training tokens, 0 when they are unknown
    price: float | None = None
    cost: float | None = None
    cost_per_million: float | None = None


def plan_gpu(
    gpu: Gpu,
    world: int,
    rows_off: list[DeviceMemory],
    rows_on: list[DeviceMemory],
    *,
    flops: tuple[Flops, Flops],
    step_tokens: int,
    total_tokens: int,
    price: float | None,
) -> GpuPlan:
    """`rows_off` / `rows_on`: the strategies without / with gradient checkpointing; a strategy
    that fits only with it uses it (and its extra forward pass in the time)."""
    rows, fits = [], []
    for off, on in zip(rows_off, rows_on, strict=True):
        row = off if off.total <= gpu.memory else on
        rows.append(row)
        fits.append(row.total <= gpu.memory)
    chosen = next((r for r, ok in zip(rows, fits, strict=True) if ok), None)
    plan = GpuPlan(gpu, world, rows, fits, chosen, price=price)
    if chosen is None:
        return plan
    per_token = flops[1 if chosen.gradient_checkpointing else 0].per_token
    plan.step_seconds = step_tokens * per_token / gpu.flops  # each GPU runs its own rows
    seconds_per_million = 1e6 * per_token / (world * gpu.flops)
    if price is not None:
        plan.cost_per_million = seconds_per_million / 3600 * world * price
    if total_tokens:
        plan.hours = total_tokens * per_token / (world * gpu.flops) / 3600
        plan.cost = plan.hours * world * price if price is not None else None
    return plan


def with_attention_for_gpu(cfg: Any) -> Any:
    """The config as a GPU run would train it: `attn_implementation: auto` means flash-attn 2 there
    (varlen kernels keep no mask), whether or not this machine has it installed."""
    if cfg.model.attn_implementation != "auto":
        return cfg
    model = cfg.model.model_copy(update={"attn_implementation": "flash_attention_2"})
    return cfg.model_copy(update={"model": model})
