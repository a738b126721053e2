"""task: pretrain — continued pretraining on raw text, loss on every token.

On top of the shared Session steps: documents are framed, joined and cut into `max_length`
blocks (lmtune.tokenize.blocks), and validation perplexity is measured before and after training.

The validation split is drawn from documents, before blocking, so no block mixes training and
validation text. One document (a single .txt file in document mode) cannot be split that way; its
blocks are split instead, with the same seeded rule (lmtune.data.split), and the console says so.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from lmtune.config.schema import RunConfig
from lmtune.errors import DataError
from lmtune.train.session import RunData, RunResult, Session


def run(cfg: RunConfig, *, resume: bool = False, console: Any = None) -> RunResult:
    from lmtune.tokenize.blocks import build_blocks

    s = Session(cfg, resume=resume, console=console)
    data = s.load_data(split=False)  # val_size: documents or blocks are split below
    tokenizer = s.load_tokenizer()
    d = cfg.data
    if d.val_path is None and d.val_size:
        train_set, val_set, split = _split(s, data, tokenizer)
    else:
        train_set = build_blocks(data.train, tokenizer, max_length=d.max_length)
        val_set = build_blocks(data.val, tokenizer, max_length=d.max_length)
        split = "file" if d.val_path else "none"
    info = {**data.info, "val_split": split, "train": train_set.stats(), "validation": val_set.stats()}
    s.finish_data(info, data.rejects, trainable=len(train_set.samples))
    t = info["train"]
    docs = f"{t['documents']} training document" + ("" if t["documents"] == 1 else "s")
    s.console.print(
        f"Tokenised {docs} into {t['tokens']:,} tokens: {t['blocks']} blocks of up to {d.max_length}; "
        f"{len(val_set.samples)} validation blocks"
    )

    model = s.load_model()
    before = s.evaluation(model, tokenizer, when="before")
    model = s.prepare(model)

    trained = s.train_lm(model, tokenizer, train_set.samples, val_set.samples)

    s.save(model, tokenizer)
    after = s.evaluation(model, tokenizer, when="after")
    summary = s.base_summary(trained["output"], trained["trainer"], trained["seconds"])
    summary["data"] = {
        "train_samples": len(train_set.samples),
        "val_samples": len(val_set.samples),
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


def _split(s: Session, data: RunData, tokenizer: Any) -> tuple[Any, Any, str]:
    """(train blocks, validation blocks, "documents" | "blocks") for data.val_size."""
    from lmtune.data.split import split_records
    from lmtune.tokenize.blocks import build_blocks

    d = s.cfg.data
    size = int(d.val_size) if d.val_size >= 1 else d.val_size
    docs = data.train
    if len(docs) > 1:
        train_docs, val_docs, _ = split_records(docs, val_size=size, seed=d.seed)
        s.console.print(f"Validation split: {len(val_docs)} of {len(docs)} documents")
        train_set = build_blocks(train_docs, tokenizer, max_length=d.max_length)
        return train_set, build_blocks(val_docs, tokenizer, max_length=d.max_length), "documents"
    whole = build_blocks(docs, tokenizer, max_length=d.max_length)
    n = len(whole.samples)
    if n < 2:
        raise DataError(
            f"val_size needs a second block, but the one document is only {whole.tokens} tokens "
            f"({n} block of max_length {d.max_length}).",
            file=docs[0].source.rpartition("#")[0] if docs else d.path,
            hint="add text, lower data.max_length, give a data.val_path, or set val_size: 0.",
        )
    train_blocks, val_blocks, _ = split_records(whole.samples, val_size=size, seed=d.seed)
    s.console.print(
        f"Validation split: the data is one document, so {len(val_blocks)} of its {n} blocks are held out "
        "(use text_split: line, several files or data.val_path to hold out whole documents)"
    )
    tokens = sum(len(b.input_ids) for b in val_blocks)
    train_set = replace(whole, samples=train_blocks, tokens=whole.tokens - tokens)
    val_set = replace(whole, samples=val_blocks, tokens=tokens, dropped_tokens=0)
    return train_set, val_set, "blocks"
