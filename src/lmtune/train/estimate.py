"""Moved to `lmtune.plan.estimate` (the plan/ package: memory, time and cost); re-exported here so
existing imports keep working."""

from lmtune.plan.estimate import (  # noqa: F401
    CPU_RUNTIME,
    CUDA_CONTEXT,
    EstimateError,
    MemoryEstimate,
    decide_checkpointing,
    estimate_memory,
    meta_model,
    model_shape,
)
from lmtune.plan.source import ModelSource, model_source  # noqa: F401
