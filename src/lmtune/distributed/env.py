"""Which process this is, read from the launcher's environment variables.

torchrun, `accelerate launch` and `lmtune train --nproc` all set RANK, WORLD_SIZE and LOCAL_RANK
(plus MASTER_ADDR/MASTER_PORT for the rendezvous). Without them this is a plain single process:
rank 0 of 1, and every helper here is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class LaunchEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launch_env() -> LaunchEnv:
    def num(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        return int(value) if value.strip().isdigit() else default

    return LaunchEnv(num("RANK", 0), num("WORLD_SIZE", 1), num("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return launch_env().is_main


def backend(device: str) -> str:
    """nccl between GPUs, gloo between CPU processes."""
    return "nccl" if device == "cuda" else "gloo"


def init_distributed(device: str) -> None:
    """Join the process group now (accelerate's PartialState, the one the Trainer later shares), so
    rank-0-first steps (run directory, tokenisation) can wait on each other before the Trainer exists."""
    env = launch_env()
    if not env.is_distributed:
        return
    from accelerate import PartialState

    PartialState(cpu=device == "cpu", backend=backend(device))


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def main_first(fn: Callable[[], T]) -> T:
    """Rank 0 runs `fn` first (it creates the run directory, writes the tokenisation cache); the
    others wait, then run `fn` themselves and find what rank 0 wrote. If rank 0 fails, the launcher
    (torchrun's agent) stops the waiting ranks."""
    env = launch_env()
    if not env.is_distributed:
        return fn()
    if env.is_main:
        result = fn()
        barrier()
        return result
    barrier()
    return fn()


def fsdp_on_cpu(trainer: Any) -> None:
    """Let FSDP2 run between CPU processes (gloo), as it does between GPUs.

    torch's fully_shard works on a CPU device mesh with gloo, but accelerate's state machine maps
    CPU processes to MULTI_CPU (plain DDP) and drops the FSDP plugin the Trainer passed. Right after
    the Trainer is built, before it prepares the model, its accelerator state is given that plugin
    back, so training takes accelerate's own FSDP2 path (fully_shard per decoder layer) exactly as on
    GPUs, where accelerate does this by itself. This is what lets FSDP be tested on a CPU machine.
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type == DistributedType.FSDP:
        return
    if trainer.args.fsdp_plugin_args is not None:  # our distributed: section
        plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    elif os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        # `accelerate launch --config_file` with an FSDP YAML: the plugin reads its FSDP_* variables
        plugin = FullyShardedDataParallelPlugin()
    else:
        return
    if trainer.args.bf16:
        plugin.set_mixed_precision("bf16")
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
