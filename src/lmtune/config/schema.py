"""The run configuration: one YAML file, one option name everywhere.

The field names here are the YAML keys, the `--set section.key=value` override names and the
Python API names. Every section forbids unknown keys (the loader turns that into a "did you mean"
message). `lmtune config schema` renders the reference from these fields and descriptions, so a
description is the user's documentation: say what the option does and what values it takes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    name: str = Field(
        "smollm2-135m-instruct",
        description="Model to fine-tune: a built-in alias (smollm2-135m-instruct), a Hugging Face id "
        "(org/name, needs network), a local model folder, or a .gguf file (dequantized on load).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Dtype the weights are loaded in for training. auto: float32 master weights "
        "(bf16 mixed precision is set by train.bf16).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu.")


class DataSection(Section):
    path: str | None = Field(
        None,
        description="Training data file (json, jsonl, csv, tsv, parquet, txt). Relative paths are "
        "resolved against the config file's folder.",
    )
    format: Literal["auto", "openai", "sharegpt", "alpaca", "dolly", "prompt_completion"] = Field(
        "auto", description="Record format; auto detects it from the field names."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map the format's field names to your file's, e.g. {instruction: question, "
        "output: answer}. Dotted paths reach into nested fields (instances.0.input).",
    )
    system: str | None = Field(None, description="System prompt added to records that have none.")
    on_error: Literal["skip", "fail"] = Field(
        "skip",
        description="skip: invalid records are counted, reported and written to rejects.jsonl; "
        "fail: stop at the first one with its file, line and field.",
    )
    val_path: str | None = Field(None, description="Validation file; if unset, val_size is split off.")
    val_size: float = Field(
        0.0, ge=0, description="Validation split taken from path: a fraction (<1) or a record count (>=1)."
    )
    template: str | None = Field(
        None,
        description="Chat template to use instead of the model's own: chatml or alpaca. Needed for "
        "base models that ship no chat template.",
    )
    max_length: int = Field(1024, ge=8, description="Samples are truncated to this many tokens.")
    train_on: Literal["all", "last", "all_tokens"] = Field(
        "all",
        description="Which tokens carry loss. all: every assistant turn (with its end-of-turn token); "
        "last: only the final assistant turn; all_tokens: the whole rendered conversation.",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N records (quick experiments).")
    seed: int = Field(42, description="Seed for the validation split.")


class MethodSection(Section):
    name: Literal["lora", "full"] = Field("lora", description="Fine-tuning method.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Modules that get LoRA: all-linear (every linear layer except the output head) "
        "or a list of module names such as [q_proj, v_proj].",
    )


class TrainSection(Section):
    epochs: float = Field(3.0, gt=0, description="Passes over the training data (ignored if max_steps > 0).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps; -1 uses epochs.")
    batch_size: int = Field(4, ge=1, description="Samples per device per forward pass.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps per optimizer step.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field("cosine")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps spent warming up.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 disables).")
    seed: int = Field(42)
    bf16: bool | Literal["auto"] = Field(
        "auto", description="bf16 mixed precision; auto turns it on where the CPU/GPU supports it natively."
    )
    log_steps: int = Field(5, ge=1, description="Log loss, learning rate and tokens/s every N steps.")
    eval_steps: int = Field(
        0, ge=0, description="Evaluate on the validation split every N steps (0: at the end only)."
    )
    save_steps: int = Field(
        0, ge=0, description="Save a checkpoint every N steps (0: no intermediate checkpoints)."
    )
    save_total_limit: int = Field(2, ge=1, description="Keep at most this many checkpoints.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    report_to: Literal["none", "tensorboard", "wandb", "mlflow"] = Field("none")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")


class EvalSection(Section):
    path: str | None = Field(
        None,
        description="Generation check run before and after training: jsonl of {prompt, reference, "
        "contains?}. The summary shows base vs tuned answers and exact-match / contains scores.",
    )
    max_new_tokens: int = Field(48, ge=1)
    compare_base: bool = Field(True, description="Also answer the prompts with the base model first.")


class OutputSection(Section):
    dir: str | None = Field(None, description="Run directory; default runs/<name>.")
    name: str | None = Field(None, description="Run name; default: the config file's name.")
    overwrite: bool = Field(False, description="Allow writing into a non-empty run directory.")


class RunConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    method: MethodSection = Field(default_factory=MethodSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.data.path is None:
            raise ValueError("data.path is required: the training data file")
        return self
