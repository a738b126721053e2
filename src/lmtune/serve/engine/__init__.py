"""The generation side of `lmtune serve`: continuous batching (scheduler.py), per-row sampling
(sampling.py), served model ids (slot.py), LoRA runs sharing one base (adapters.py) and the hand-off
to vLLM (vllm.py). serve/app.py only speaks HTTP."""

from lmtune.serve.engine.scheduler import QueueFull, Scheduler
from lmtune.serve.engine.slot import ModelSlot, Outcome, Reply

__all__ = ["ModelSlot", "Outcome", "QueueFull", "Reply", "Scheduler"]
