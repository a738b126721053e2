"""Which data formats belong to which task, checked when the config is read."""

from __future__ import annotations

# The record formats each task's loader reads (lmtune.data.sources); grpo/rloo read prompts their own way.
TASK_FORMATS = {
    "sft": ("openai", "sharegpt", "alpaca", "dolly", "prompt_completion"),
    "pretrain": ("text",),
    "classification": ("classification",),
    "preference": ("preference", "sharegpt_ranking", "openai_preference", "kto"),
    "grpo": (),
    "rloo": (),
}


def check_formats(task: str, data_format: str, dataset_formats: list[str]) -> None:
    """A format of another task is refused when the config is read, before anything is loaded:
    raises ValueError (pydantic's validator turns it into the config message)."""
    allowed = TASK_FORMATS[task]
    named = [("data.format", data_format)] + [
        (f"data.datasets[{i}].format", fmt) for i, fmt in enumerate(dataset_formats)
    ]
    for key, fmt in named:
        if fmt != "auto" and fmt not in allowed:
            owner = next((t for t, fmts in TASK_FORMATS.items() if fmt in fmts), None)
            choices = ", ".join(("auto", *allowed))
            raise ValueError(
                f"{key}: {fmt} is a format of task: {owner}, not of task: {task}. Set task: {owner} for this "
                f"data, or use one of {choices}"
            )
