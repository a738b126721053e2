"""The trained model gathered once, at the end, into the single-process run-directory layout.

Under FSDP and ZeRO-3 no process holds a whole parameter after training: each keeps its shard.
Checkpoints stay sharded (fast to write, resumed on the same world size), but the run directory's
adapter or weights are written whole, so `lmtune merge/chat/eval/export/serve` read a distributed
run exactly like a single-process one and never need the world size it was trained with.

    rank 0: [shard 0] ─┐
    rank 1: [shard 1] ─┼─► get_state_dict (collective; full tensors on rank 0, in CPU memory)
    rank N: [shard N] ─┘         │
                                 ▼
                      rank 0: method.save(model, run_dir, state_dict=full)   (others write nothing)

Under DDP and ZeRO-1/2 every process already holds the whole model: nothing is gathered.
"""

from __future__ import annotations

from typing import Any


def fsdp_sharded(model: Any) -> bool:
    """True when FSDP2's fully_shard was applied to the model (its parameters are DTensor shards)."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def zero3(trainer: Any) -> bool:
    if not getattr(trainer, "is_deepspeed_enabled", False):
        return False
    plugin = trainer.accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


def full_state_dict(trainer: Any) -> dict[str, Any] | None:
    """The full state dict on rank 0 ({} on the others), or None when the in-memory model is whole.

    Every process must call this: gathering is a collective operation. The model itself is asked
    whether it is sharded (the accelerator's state may be reset after training)."""
    if trainer is None:
        return None
    import torch.distributed as dist

    main = not dist.is_initialized() or dist.get_rank() == 0
    if fsdp_sharded(trainer.model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # what accelerate's get_state_dict does for FSDP2: whole tensors, on rank 0's CPU only
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(trainer.model, options=options)
        return dict(state) if main else {}
    if zero3(trainer):
        state = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # DeepSpeed gathers via its engine
        return dict(state) if main else {}
    return None
