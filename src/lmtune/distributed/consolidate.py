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


def is_sharded(trainer: Any) -> bool:
    """True when parameters are split across processes (FSDP, DeepSpeed ZeRO-3)."""
    from accelerate.utils import DistributedType

    acc = getattr(trainer, "accelerator", None)
    if acc is None:
        return False
    if acc.distributed_type == DistributedType.FSDP:
        return True
    if acc.distributed_type == DistributedType.DEEPSPEED:
        return int(acc.deepspeed_config.get("zero_optimization", {}).get("stage", 0)) == 3
    return False


def full_state_dict(trainer: Any) -> dict[str, Any] | None:
    """The full state dict on rank 0 ({} on the others), or None when the in-memory model is whole.

    Every process must call this: gathering is a collective operation."""
    if trainer is None or not is_sharded(trainer):
        return None
    from accelerate.utils import DistributedType

    acc = trainer.accelerator
    # DeepSpeed gathers through its engine (model_wrapped); FSDP2 shards the module in place.
    model = trainer.model_wrapped if acc.distributed_type == DistributedType.DEEPSPEED else trainer.model
    state = acc.get_state_dict(model)
    return dict(state) if acc.is_main_process else {}
