"""The `distributed:` config section turned into what the Trainer takes, decided once and printed.

    distributed.strategy ──► resolve() ──► Strategy(name, world_size, ...)
                                              │
              check_supported()  ◄────────────┤  refusals, one sentence each, before any loading
              fast_path_changes() ◄───────────┤  lmtune's own speed paths kept or switched off
              trainer_kwargs()   ◄────────────┘  ddp_backend / fsdp + fsdp_config / deepspeed

The engines are the standard ones (torch DDP, FSDP2 via accelerate, DeepSpeed via the Trainer's
integration); nothing here runs training.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.config.schema import DistributedSection, RunConfig
from lmtune.distributed.env import LaunchEnv, backend, launch_env
from lmtune.errors import ConfigError

# accelerate YAML `distributed_type` -> our strategy name
ACCELERATE_TYPES = {
    "NO": "none",
    "MULTI_GPU": "ddp",
    "MULTI_CPU": "ddp",
    "FSDP": "fsdp",
    "DEEPSPEED": "deepspeed",
}
SHARDED = ("fsdp", "deepspeed")


@dataclass
class Strategy:
    name: str  # none, ddp, fsdp, deepspeed
    world_size: int = 1
    rank: int = 0
    zero_stage: int | None = None
    config_file: Path | None = None
    config_kind: str | None = None  # "deepspeed" (JSON) or "accelerate" (YAML)
    notes: list[str] = field(default_factory=list)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.name in SHARDED

    @property
    def sharded(self) -> bool:
        return self.name in SHARDED


def read_config_file(path: str) -> tuple[str, str, dict[str, Any]]:
    """(kind, strategy, contents) of distributed.config_file; a missing or unreadable file is a sentence."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"distributed.config_file: {path} does not exist. Give the path of an existing file."
        )
    try:
        if p.suffix.lower() == ".json":
            return "deepspeed", "deepspeed", json.loads(p.read_text(encoding="utf-8"))
        import yaml

        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (ValueError, OSError) as err:
        raise ConfigError(f"distributed.config_file: {path} cannot be read ({err}).") from err
    kind = str(data.get("distributed_type", "NO")).upper()
    if kind not in ACCELERATE_TYPES:
        raise ConfigError(
            f"distributed.config_file: {path} has distributed_type {kind}; lmtune runs "
            f"{', '.join(ACCELERATE_TYPES)}."
        )
    return "accelerate", ACCELERATE_TYPES[kind], data


def resolve(d: DistributedSection, env: LaunchEnv | None = None) -> Strategy:
    """The strategy this launch runs: `auto` becomes ddp under a multi-process launch, else none."""
    env = env or launch_env()
    name, kind, path, contents = d.strategy, None, None, {}
    if d.config_file:
        kind, from_file, contents = read_config_file(d.config_file)
        path = Path(d.config_file)
        if name not in ("auto", from_file):
            raise ConfigError(
                f"distributed.config_file {d.config_file} configures {from_file}, but distributed.strategy "
                f"is {name}. Set strategy: {from_file} (or auto)."
            )
        name = from_file
    if name == "auto":
        name = "ddp" if env.is_distributed else "none"
    if name == "none" and env.is_distributed:
        raise ConfigError(
            f"distributed.strategy: none, but this is one of {env.world_size} launched processes (WORLD_SIZE): "
            "each would train its own copy. Set strategy: ddp (or auto), or launch a single process."
        )
    stage = None
    if name == "deepspeed":
        if kind == "deepspeed":
            stage = int(contents.get("zero_optimization", {}).get("stage", 0))
        elif kind == "accelerate":
            stage = int(contents.get("deepspeed_config", {}).get("zero_stage", 0))
        else:
            stage = 2 if d.zero_stage is None else d.zero_stage
    return Strategy(name, env.world_size, env.rank, stage, path, kind)


def require_launch(strategy: Strategy) -> None:
    """FSDP and DeepSpeed need a process group even for one process: a plain run is told how to launch."""
    if strategy.sharded and "WORLD_SIZE" not in __import__("os").environ:
        raise ConfigError(
            f"distributed.strategy: {strategy.name} needs a distributed launch, even on one device: run "
            "`lmtune train CONFIG --nproc N`, or start it under torchrun / accelerate launch."
        )
    if strategy.name == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "distributed.strategy: deepspeed needs the deepspeed package, which is not installed. "
            "Install it (pip install 'lmtune[deepspeed]'), or use strategy: fsdp."
        )


def check_supported(cfg: RunConfig, strategy: Strategy, device: str) -> None:
    """Refuse, up front and with the reason, what lmtune does not run under this strategy."""
    if not strategy.sharded:
        return
    s, m = strategy.name, cfg.method.name
    why = None
    if m == "qlora":
        why = (
            "QLoRA's 4-bit bitsandbytes weights would be sharded by FSDP/ZeRO, which needs a CUDA build and a "
            "bnb_4bit_quant_storage matching the shard dtype that lmtune does not set up"
            + (" (and there is no CUDA device here)" if device != "cuda" else "")
            + "; use strategy: ddp"
        )
    elif cfg.method.lora_plus_ratio is not None:
        why = (
            "LoRA+ hands the Trainer its own optimizer, which the Trainer refuses under FSDP/DeepSpeed "
            "(they build the optimizer over the sharded parameters); drop method.lora_plus_ratio or use ddp"
        )
    elif cfg.train.optim != "adamw":
        why = f"bitsandbytes' 8-bit AdamW ({cfg.train.optim}) does not take sharded (DTensor/ZeRO) parameters; use train.optim: adamw"
    elif cfg.task in ("preference", "grpo", "rloo"):
        why = (
            "TRL's preference and RL trainers compute reference log-probs (a copied model, or the adapter "
            "switched off) around the sharded forward"
            + (
                " and sample answers with generate, which needs the full weights"
                if cfg.task != "preference"
                else ""
            )
            + ", which lmtune has not verified; run it with strategy: ddp (verified on 2 CPU processes)"
        )
    elif m in ("prefix", "prompt", "ptuning"):
        why = (
            f"{m} keeps its virtual-token parameters in PEFT's wrapper outside the decoder layers that are "
            "sharded, which lmtune has not verified; use strategy: ddp (these adapters are tiny anyway)"
        )
    if why:
        raise ConfigError(f"method {m} / task {cfg.task} cannot run with distributed.strategy: {s}: {why}.")


def fast_path_changes(cfg: RunConfig, strategy: Strategy) -> dict[str, str]:
    """lmtune's speed paths switched off for this strategy, each with the one line that says why."""
    if not strategy.distributed:
        return {}
    off = {
        "chunked loss": "off (the forward must go through the DDP/FSDP/DeepSpeed wrapper, which computes "
        "the full-logits loss)"
    }
    if strategy.sharded:
        off["bf16 frozen weights"] = "off (FSDP/ZeRO shard one dtype per unit and keep their own precision)"
        off["torch.compile"] = "off (not combined with FSDP/ZeRO here)"
    return off


def wrap_classes(model: Any) -> list[str]:
    """The decoder-layer classes FSDP shards as units: the model's `_no_split_modules`."""
    for module in model.modules():
        names = getattr(module, "_no_split_modules", None)
        if names:
            return list(names)
    return []


def fsdp_config(d: DistributedSection, wrap: list[str], checkpointing: bool) -> dict[str, Any]:
    """TrainingArguments.fsdp_config for FSDP2 (fully_shard per decoder layer)."""
    classes = wrap if d.fsdp_wrap == "auto" else list(d.fsdp_wrap)
    config: dict[str, Any] = {
        "version": 2,
        "reshard_after_forward": True,  # full shard: parameters gathered per layer, freed after use
        "cpu_offload": d.offload_params,
        "activation_checkpointing": checkpointing,
        # checkpoints keep each rank's shard (no full gather per save); the final model is gathered once
        "state_dict_type": "SHARDED_STATE_DICT",
    }
    if classes:
        config["transformer_layer_cls_to_wrap"] = classes
    return config


def deepspeed_config(d: DistributedSection) -> dict[str, Any]:
    """A DeepSpeed config for the Trainer's integration; "auto" values are filled in by transformers
    from the TrainingArguments (batch size, accumulation, clipping, bf16, learning rate)."""
    stage = 2 if d.zero_stage is None else d.zero_stage
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 1:
        zero.update(overlap_comm=True, contiguous_gradients=True, reduce_bucket_size="auto")
    if d.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if d.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_gather_16bit_weights_on_model_save=True,  # the final save gathers a full model
        )
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
    }
    if d.offload_optimizer:
        # offloaded optimizer state is stepped on the CPU by DeepSpeed's own (vectorised) Adam
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return config


# config attributes that mark a mixture-of-experts model (Mixtral, Qwen2/3-MoE, DeepSeek, OLMoE...)
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def unused_parameters(model: Any) -> bool:
    """DDP's find_unused_parameters: whether some trainable parameter may get no gradient in a step.

    Left to itself the Trainer passes True for every PEFT model (it is not a PreTrainedModel), and
    torch then walks the autograd graph each step and warns that nothing was unused. Every lmtune
    method (adapters, heads, prompt encoders, unfrozen layers) uses all its trainable parameters in
    every forward of a dense model, so False is right and faster. A mixture-of-experts model is the
    exception: an expert the router sent no token in this step gets no gradient, and DDP with False
    would stop with "Expected to have finished reduction", so it keeps True."""
    config = getattr(model, "config", None)
    return any((getattr(config, key, None) or 0) > 1 for key in MOE_KEYS)


def trainer_kwargs(
    cfg: RunConfig,
    strategy: Strategy,
    *,
    device: str,
    wrap: list[str],
    checkpointing: bool,
    find_unused: bool = False,
) -> dict[str, Any]:
    """TrainingArguments keyword arguments for the strategy ({} for a single plain process)."""
    if strategy.name == "none":
        return {}
    kw: dict[str, Any] = {"ddp_backend": backend(device)}
    if strategy.name == "ddp":
        kw["ddp_find_unused_parameters"] = find_unused
    if strategy.config_kind == "accelerate":
        return kw  # accelerate launch --config_file set the plugin up from the environment
    if strategy.name == "fsdp":
        d = cfg.distributed
        ckpt = checkpointing if d.activation_checkpointing == "auto" else d.activation_checkpointing
        kw.update(fsdp=True, fsdp_config=fsdp_config(d, wrap, ckpt), activation_checkpointing=False)
    elif strategy.name == "deepspeed":
        kw["deepspeed"] = (
            str(strategy.config_file) if strategy.config_file else deepspeed_config(cfg.distributed)
        )
    return kw


def batch_line(cfg: RunConfig, strategy: Strategy) -> str:
    t = cfg.train
    glob = t.batch_size * t.grad_accum * strategy.world_size
    return (
        f"Distributed: {strategy.name} over {strategy.world_size} process(es)"
        + (f", ZeRO stage {strategy.zero_stage}" if strategy.zero_stage is not None else "")
        + f"; per-device batch {t.batch_size} x accumulation {t.grad_accum} x {strategy.world_size} "
        f"processes = global batch {glob}"
    )
