"""task: pretrain — continued pretraining on raw text, loss on every token.

On top of the shared Session steps: documents are framed, joined and cut into `max_length`
blocks (lmtune.tokenize.blocks' rule), from a memory-mapped token store built once per corpus and
tokenizer (lmtune.datastore.text_store, train/pretrain_data.py), and validation perplexity is
measured before and after training.

The validation split is drawn from documents, before blocking, so no block mixes training and
validation text. One document (a single .txt file in document mode) cannot be split that way; its
blocks are split instead, with the same seeded rule (lmtune.data.split), and the console says so.
"""

from __future__ import annotations

import math
from typing import Any

from lmtune.config.schema import RunConfig
from lmtune.train.session import RunResult, Session


def run(cfg: RunConfig, *, resume: bool = False, console: Any = None) -> RunResult:
    from lmtune.train.pretrain_data import load_pretrain_data
    from lmtune.train.sft_data import check_sources

    s = Session(cfg, resume=resume, console=console)
    check_sources(cfg)  # a broken data file is said before the tokenizer and model load
    tokenizer = s.load_tokenizer()
    d = cfg.data
    # Streamed and tokenised into the memory-mapped token store (or mapped from it): the blocks are
    # cut from the token file as training asks, never held as lists (train/pretrain_data.py).
    data = load_pretrain_data(s, tokenizer)
    train_set, val_set, split = data.train, data.val, data.split
    info = {**data.info, "val_split": split, "train": data.train_stats, "validation": data.val_stats}
    s.finish_data(info, data.rejects, trainable=len(train_set))
    t = info["train"]
    docs = f"{t['documents']} training document" + ("" if t["documents"] == 1 else "s")
    s.console.print(
        f"Tokenised {docs} into {t['tokens']:,} tokens: {t['blocks']} blocks of up to {d.max_length}; "
        f"{len(val_set)} validation blocks"
    )

    model = s.load_model()
    before = s.evaluation(model, tokenizer, when="before")
    model = s.prepare(model)

    trained = s.train_lm(model, tokenizer, train_set, val_set)

    s.save(model, tokenizer)
    after = s.evaluation(model, tokenizer, when="after")
    summary = s.base_summary(trained["output"], trained["trainer"], trained["seconds"])
    summary["data"] = {
        "train_samples": len(train_set),
        "val_samples": len(val_set),
        "rejected": len(data.rejects),
        "train_documents": train_set.documents,
        "val_documents": val_set.documents,
        "val_split": split,
    }
    summary["eval_loss"] = eval_loss = trained["eval_loss"]
    summary["speed"] = trained["speed"]
    summary["metrics"] = {"perplexity": {k: perplexity(v) for k, v in eval_loss.items()}}
    summary["eval"] = s.evaluation_summary(before, after)
    return s.finish(summary, model)


def perplexity(loss: float | None) -> float | None:
    """exp(mean token loss); inf where the loss is too large for a float."""
    if loss is None:
        return None
    return math.exp(loss) if loss < 700 else math.inf
