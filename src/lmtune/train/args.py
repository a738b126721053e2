"""Map our config onto `transformers.TrainingArguments`.

Derived settings (bf16 auto, step-based evaluation) are decided here and printed by the caller;
the user's values are passed through unchanged.
"""

from __future__ import annotations

from typing import Any

from lmtune.config.schema import RunConfig
from lmtune.models.cpu import cpu_has_native_bf16
from lmtune.run.layout import RunDir


def use_bf16(setting: bool | str, device: str) -> bool:
    if setting != "auto":
        return bool(setting)
    if device == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def training_arguments(
    cfg: RunConfig,
    run: RunDir,
    *,
    device: str,
    has_val: bool,
    args_class: Any = None,
    plan: Any = None,
    **overrides: Any,
) -> Any:
    """TrainingArguments (or a subclass such as TRL's DPOConfig, via `args_class`) for the run;
    `overrides` are task-specific extra arguments of that class."""
    from transformers import TrainingArguments

    t = cfg.train
    eval_strategy = "steps" if has_val and t.eval_steps else "no"
    kwargs: dict[str, Any] = dict(
        output_dir=str(run.checkpoints),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        optim={"adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit"}.get(
            t.optim, "adamw_torch"
        ),
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float < 1 is a ratio of total steps
        max_grad_norm=t.max_grad_norm,  # 0 disables clipping
        seed=t.seed,
        data_seed=t.seed,
        bf16=use_bf16(t.bf16, device),
        use_cpu=device == "cpu",
        logging_steps=t.log_steps,
        logging_first_step=True,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps or None,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=t.save_total_limit,
        activation_checkpointing=plan.gradient_checkpointing if plan else t.gradient_checkpointing is True,
        run_name=run.root.name,  # what W&B and MLflow call the run
        report_to=[],  # the tracker callbacks are ours, placed after the metrics (train/trackers.py)
        dataloader_num_workers=t.num_workers,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        disable_tqdm=True,
        save_only_model=False,
        train_sampling_strategy="random" if cfg.data.shuffle else "sequential",
    )
    return (args_class or TrainingArguments)(**{**kwargs, **overrides})
