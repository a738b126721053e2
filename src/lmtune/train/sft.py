"""task: sft — chat/instruction fine-tuning with the loss masked to the assistant turns.

On top of the shared Session steps: tokenise with the chat template and masks, optional "before"
generation checks, the Hugging Face Trainer with validation loss before and after.
"""

from __future__ import annotations

from typing import Any

from lmtune.config.schema import RunConfig
from lmtune.train.session import RunResult, Session

MASKING_REASONS = ("no_trained_tokens", "no_trained_turn", "template_not_prefix_stable")


def run(cfg: RunConfig, *, resume: bool = False, console: Any = None) -> RunResult:
    from lmtune.tokenize.dataset import PadCollator, SampleDataset, tokenize_records
    from lmtune.tokenize.templates import apply_template_choice

    s = Session(cfg, resume=resume, console=console)
    data = s.load_data()

    tokenizer = s.load_tokenizer()
    template = apply_template_choice(tokenizer, cfg.data.template)
    kw = {"max_length": cfg.data.max_length, "train_on": cfg.data.train_on}
    train_set = tokenize_records(data.train, tokenizer, **kw)
    val_set = tokenize_records(data.val, tokenizer, **kw)
    rejects = data.rejects + train_set.rejects + val_set.rejects
    info = {**data.info, "train": train_set.stats(), "validation": val_set.stats(), "template": template}
    s.finish_data(info, rejects, trainable=len(train_set.samples), stage_reasons=MASKING_REASONS)
    s.console.print(
        f"Tokenised {len(train_set.samples)} training samples "
        f"({info['train']['trained_tokens']} trained of {info['train']['tokens']} tokens), "
        f"{len(val_set.samples)} validation samples"
    )

    model = s.load_model()
    before = s.generation_checks(model, tokenizer, when="before")
    model = s.prepare(model)

    from transformers import Trainer

    from lmtune.train.optim import build_optimizer

    has_val = bool(val_set.samples)
    trainer = s.quiet(
        Trainer(
            model=model,
            args=s.training_args(has_val=has_val),
            train_dataset=SampleDataset(train_set.samples),
            eval_dataset=SampleDataset(val_set.samples) if has_val else None,
            data_collator=PadCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            callbacks=s.callbacks(),
            optimizers=(build_optimizer(model, cfg), None),
        )
    )
    eval_before = trainer.evaluate()["eval_loss"] if has_val and not resume else None
    output, seconds = s.train(trainer)
    eval_after = trainer.evaluate()["eval_loss"] if has_val else None

    s.save(model, tokenizer, template=template)
    after = s.generation_checks(model, tokenizer, when="after")
    summary = s.base_summary(output, trainer, seconds)
    summary["data"] = {
        "train_samples": len(train_set.samples),
        "val_samples": len(val_set.samples),
        "rejected": len(rejects),
    }
    summary["eval_loss"] = {"before": eval_before, "after": eval_after}
    summary["checks"] = {"before": before, "after": after}
    return s.finish(summary, model)
