"""task: sft — chat/instruction fine-tuning with the loss masked to the assistant turns.

On top of the shared Session steps: tokenise with the chat template and masks, optional "before"
generation checks, the Hugging Face Trainer with validation loss before and after.
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
    from lmtune.tokenize.cache import default_cache_dir
    from lmtune.tokenize.dataset import tokenize_records
    from lmtune.tokenize.templates import apply_template_choice, check_system_role

    s = Session(cfg, resume=resume, console=console)
    data = s.load_data()

    tokenizer = s.load_tokenizer()
    template = apply_template_choice(tokenizer, cfg.data.template)
    cache_dir = default_cache_dir() if cfg.data.cache else None
    kw = {"max_length": cfg.data.max_length, "train_on": cfg.data.train_on, "cache_dir": cache_dir}
    kw["system_merge"] = cfg.data.system_merge
    note = check_system_role(tokenizer, data.train + data.val, cfg.data.system_merge)
    if note:
        s.console.print(note, highlight=False)
    # Under a multi-process launch rank 0 tokenises (and fills the cache) first; the others read it.
    train_set, val_set = s.main_first(
        lambda: (tokenize_records(data.train, tokenizer, **kw), tokenize_records(data.val, tokenizer, **kw))
    )
    if train_set.cache_hit:
        s.console.print(f"Tokenised samples reused from the cache: {train_set.cache_file}")
    rejects = data.rejects + train_set.rejects + val_set.rejects
    info = {**data.info, "train": train_set.stats(), "validation": val_set.stats(), "template": template}
    s.finish_data(info, rejects, trainable=len(train_set.samples), stage_reasons=MASKING_REASONS)
    s.console.print(
        f"Tokenised {len(train_set.samples)} training samples "
        f"({info['train']['trained_tokens']} trained of {info['train']['tokens']} tokens), "
        f"{len(val_set.samples)} validation samples"
    )

    model = s.load_model()
    before = s.evaluation(model, tokenizer, when="before")
    model = s.prepare(model)

    trained = s.train_lm(model, tokenizer, train_set.samples, val_set.samples)

    s.save(model, tokenizer, template=template)
    after = s.evaluation(model, tokenizer, when="after")
    summary = s.base_summary(trained["output"], trained["trainer"], trained["seconds"])
    summary["data"] = {
        "train_samples": len(train_set.samples),
        "val_samples": len(val_set.samples),
        "rejected": len(rejects),
    }
    if s.packing:
        summary["data"]["packing"] = s.packing
    summary["eval_loss"] = trained["eval_loss"]
    summary["speed"] = trained["speed"]
    summary["eval"] = s.evaluation_summary(before, after)
    return s.finish(summary, model)
