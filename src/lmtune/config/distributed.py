"""The distributed section: how several processes share a run (lmtune.distributed)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmtune.config.section import Section

DISTRIBUTED_STRATEGIES = ("auto", "none", "ddp", "fsdp", "deepspeed")


class DistributedSection(Section):
    strategy: Literal[DISTRIBUTED_STRATEGIES] = Field(  # type: ignore[valid-type]
        "auto",
        description="How several processes (torchrun, accelerate launch, lmtune train --nproc) share the "
        "work. auto: ddp when WORLD_SIZE > 1, else none; ddp: a full copy per device, gradients averaged; "
        "fsdp: PyTorch FSDP2, parameters, gradients and optimizer state sharded; deepspeed: DeepSpeed "
        "ZeRO (needs the deepspeed package). See docs/distributed.md.",
    )
    zero_stage: Literal[0, 1, 2, 3] | None = Field(
        None,
        description="deepspeed only: ZeRO stage (1: optimizer state sharded, 2: + gradients, 3: + "
        "parameters). Default 2.",
    )
    offload_optimizer: bool = Field(
        False,
        description="deepspeed (stage >= 1): keep optimizer state in CPU memory (DeepSpeed's CPU Adam).",
    )
    offload_params: bool = Field(
        False,
        description="Keep parameters in CPU memory: deepspeed stage 3, or fsdp (FSDP2 then offloads "
        "parameters, gradients and optimizer state together).",
    )
    fsdp_wrap: list[str] | Literal["auto"] = Field(
        "auto",
        description="fsdp: module classes sharded as one unit. auto: the model's decoder layer (its "
        "_no_split_modules, e.g. LlamaDecoderLayer).",
    )
    activation_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="fsdp: recompute each wrapped layer's activations in backward (FSDP's own "
        "checkpointing). auto: as train.gradient_checkpointing decides.",
    )
    config_file: str | None = Field(
        None,
        description="An existing DeepSpeed JSON (used as the Trainer's deepspeed config) or accelerate "
        "YAML (lmtune train --nproc launches through accelerate launch with it), used as it is; the "
        "options above must then be left at their defaults.",
    )

    @model_validator(mode="after")
    def _combinations(self) -> DistributedSection:
        s = self.strategy
        if self.zero_stage is not None and s not in ("deepspeed", "auto"):
            raise ValueError(
                f"distributed.zero_stage applies to strategy: deepspeed, not {s}. Set strategy: deepspeed, "
                "or remove zero_stage (fsdp always shards parameters, gradients and optimizer state)"
            )
        if self.zero_stage is not None and s == "auto":
            raise ValueError(
                "distributed.zero_stage needs strategy: deepspeed; add it to the distributed section"
            )
        if (self.offload_optimizer or self.offload_params) and s not in ("deepspeed", "fsdp"):
            raise ValueError(
                f"distributed.offload_optimizer/offload_params need strategy: deepspeed or fsdp (got {s}): "
                "ddp keeps a full copy of everything on each device"
            )
        stage = 2 if self.zero_stage is None else self.zero_stage
        if s == "deepspeed" and self.offload_params and stage != 3:
            raise ValueError(
                f"distributed.offload_params needs zero_stage: 3 (got {stage}): only ZeRO-3 partitions the "
                "parameters it could offload. Set zero_stage: 3, or use offload_optimizer with stage 1-2"
            )
        if s == "deepspeed" and self.offload_optimizer and stage == 0:
            raise ValueError(
                "distributed.offload_optimizer needs zero_stage 1, 2 or 3 (stage 0 keeps no ZeRO state)"
            )
        if s == "fsdp" and self.offload_optimizer and not self.offload_params:
            raise ValueError(
                "strategy: fsdp offloads parameters, gradients and optimizer state together: set "
                "offload_params: true (offload_optimizer alone is a deepspeed option)"
            )
        if s != "fsdp" and (self.fsdp_wrap != "auto" or self.activation_checkpointing != "auto"):
            raise ValueError(
                f"distributed.fsdp_wrap and activation_checkpointing apply to strategy: fsdp, not {s}; "
                "use train.gradient_checkpointing for the other strategies"
            )
        if self.config_file is not None:
            from pathlib import Path

            suffix = Path(self.config_file).suffix.lower()
            if suffix not in (".json", ".yaml", ".yml"):
                raise ValueError(
                    f"distributed.config_file {self.config_file}: expected a DeepSpeed .json or an "
                    "accelerate .yaml file"
                )
            if suffix == ".json" and s not in ("deepspeed", "auto"):
                raise ValueError(
                    f"distributed.config_file {self.config_file} is DeepSpeed JSON: set strategy: deepspeed"
                )
            tuned = self.zero_stage is not None or self.offload_optimizer or self.offload_params
            if tuned or self.fsdp_wrap != "auto" or self.activation_checkpointing != "auto":
                raise ValueError(
                    "distributed.config_file is used as it is: leave zero_stage, offload_*, fsdp_wrap and "
                    "activation_checkpointing unset (put them in the file), or drop config_file"
                )
        return self
