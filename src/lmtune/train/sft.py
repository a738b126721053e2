"""task: sft — chat/instruction fine-tuning with the loss masked to the assistant turns.

On top of the shared Session steps: tokenise with the chat template and masks into the memory-mapped
store (lmtune.datastore; reused by later runs), optional "before" generation checks, the Hugging Face
Trainer with validation loss before and after.
"""

from __future__ import annotations

from typing import Any

from lmtune.config.schema import RunConfig
from lmtune.train.session import RunResult, Session

MASKING_REASONS = (
    "no_trained_tokens",
    "no_trained_turn",
    "template_not_prefix_stable",
    "span_not_found",
    "end_of_turn_not_found",
    "template_error",
)


def run(cfg: RunConfig, *, resume: bool = False, console: Any = None) -> RunResult:
    from lmtune.tokenize.templates import apply_template_choice
    from lmtune.train.sft_data import check_sources, load_sft_data

    s = Session(cfg, resume=resume, console=console)
    check_sources(cfg)  # a broken data file is said before the tokenizer and model load
    tokenizer = s.load_tokenizer()
    template = apply_template_choice(tokenizer, cfg.data.template)
    # Read, tokenised and masked into the memory-mapped store (or mapped from it): train_set and
    # val_set hold row numbers and lengths, never the records or their tokens (train/sft_data.py).
    data = load_sft_data(s, tokenizer)
    train_set, val_set = data.train, data.val
    info = {**data.info, "train": train_set.stats(), "validation": val_set.stats(), "template": template}
    s.finish_data(info, data.rejects, trainable=len(train_set), stage_reasons=MASKING_REASONS)
    s.console.print(
        f"Tokenised {len(train_set)} training samples "
        f"({info['train']['trained_tokens']} trained of {info['train']['tokens']} tokens), "
        f"{len(val_set)} validation samples"
    )

    model = s.load_model()
    before = s.evaluation(model, tokenizer, when="before")
    model = s.prepare(model)

    trained = s.train_lm(model, tokenizer, train_set, val_set)

    s.save(model, tokenizer, template=template)
    after = s.evaluation(model, tokenizer, when="after")
    summary = s.base_summary(trained["output"], trained["trainer"], trained["seconds"])
    summary["data"] = {
        "train_samples": len(train_set),
        "val_samples": len(val_set),
        "rejected": len(data.rejects),
    }
    if s.packing:
        summary["data"]["packing"] = s.packing
    summary["eval_loss"] = trained["eval_loss"]
    summary["speed"] = trained["speed"]
    summary["eval"] = s.evaluation_summary(before, after)
    return s.finish(summary, model)
