"""`lmtune train`: one run, top to bottom.

The steps build on each other in this order:
  1. run directory and resolved config      (nothing is trained into a directory by accident)
  2. data: read, validate, split            (rejects counted and written, never dropped silently)
  3. tokenizer + chat template, then masks  (the template is saved with the run)
  4. base model, optional "before" checks, then the method (LoRA / full) on top
  5. the Hugging Face Trainer with our progress bar and metrics file
  6. save the trained weights, tokenizer, marker, plots, "after" checks and summary
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune import __version__
from lmtune.config.loader import dump_config
from lmtune.config.schema import RunConfig
from lmtune.data.records import count_reasons
from lmtune.errors import ConfigError, DataError
from lmtune.run.layout import RunDir, prepare_run_dir, write_json


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    model: Any = None  # the trained model, still in memory (for tests and the Python API)


def run_name(cfg: RunConfig) -> Path:
    if cfg.output.dir:
        return Path(cfg.output.dir)
    return Path("runs") / (cfg.output.name or "run")


def train(cfg: RunConfig, *, resume: bool = False, console: Any = None) -> RunResult:
    from rich.console import Console

    console = console or Console()
    started = time.perf_counter()

    # 1. Run directory ------------------------------------------------------------------------
    if resume and (
        cfg.method.name == "ptuning" or (cfg.method.name == "prefix" and cfg.method.prefix_projection)
    ):
        raise ConfigError(
            f"--resume is not possible for method {cfg.method.name} with a prompt encoder: PEFT's "
            "checkpoints keep only the encoder's output, not its weights, so training would restart it. "
            "The run directory and its checkpoints still load for chat and generate; "
            "to train further, start a new run."
        )
    run = prepare_run_dir(run_name(cfg), overwrite=cfg.output.overwrite, resume=resume)
    run.config.write_text(dump_config(cfg), encoding="utf-8")
    console.print(f"[bold]Run directory:[/] {run.root}")

    # 2. Data ---------------------------------------------------------------------------------
    from lmtune.data.split import split_records

    train_load = _load(cfg.data.path, cfg, console)
    rejects = list(train_load.rejects)
    train_recs = train_load.records
    val_recs: list = []
    if cfg.data.val_path:
        val_load = _load(cfg.data.val_path, cfg, console)
        rejects += val_load.rejects
        val_recs = val_load.records
    elif cfg.data.val_size:
        size = int(cfg.data.val_size) if cfg.data.val_size >= 1 else cfg.data.val_size
        train_recs, val_recs, _ = split_records(train_recs, val_size=size, seed=cfg.data.seed)
        console.print(f"Validation split: {len(val_recs)} of {len(train_load.records)} records")

    # 3. Tokenizer, template, masks -----------------------------------------------------------
    from lmtune.models.load import count_parameters, load_causal_lm, load_tokenizer, resolve_device
    from lmtune.models.resolve import resolve_model_ref
    from lmtune.tokenize.dataset import tokenize_records
    from lmtune.tokenize.templates import apply_template_choice

    ref = resolve_model_ref(cfg.model.name)
    tokenizer = load_tokenizer(ref)
    template = apply_template_choice(tokenizer, cfg.data.template)
    kw = {"max_length": cfg.data.max_length, "train_on": cfg.data.train_on}
    train_set = tokenize_records(train_recs, tokenizer, **kw)
    val_set = tokenize_records(val_recs, tokenizer, **kw)
    rejects += train_set.rejects + val_set.rejects
    _write_rejects(run, rejects, cfg, console)
    if not train_set.samples:
        raise DataError(
            "no trainable samples left after validation and masking",
            file=cfg.data.path,
            hint=f"see {run.rejects} for the reason of each skipped record.",
        )
    data_stats = {
        "train_file": cfg.data.path,
        "format": train_load.format,
        "records_read": train_load.total,
        "rejected_by_reason": count_reasons(rejects),
        "train": train_set.stats(),
        "validation": val_set.stats(),
        "template": template,
    }
    write_json(run.data_stats, data_stats)
    console.print(
        f"Tokenised {len(train_set.samples)} training samples "
        f"({data_stats['train']['trained_tokens']} trained of {data_stats['train']['tokens']} tokens), "
        f"{len(val_set.samples)} validation samples"
    )

    # 4. Model, before-checks, method ---------------------------------------------------------
    from lmtune.methods.base import get_method
    from lmtune.train.args import use_bf16

    method = get_method(cfg.method.name)
    device = resolve_device(cfg.model.device)
    bf16 = use_bf16(cfg.train.bf16, device)
    # Training keeps float32 master weights unless told otherwise: pure bf16 weights would round
    # small updates away; bf16 speed comes from mixed precision (train.bf16).
    dtype = "float32" if cfg.model.dtype == "auto" else cfg.model.dtype
    model = load_causal_lm(ref, dtype=dtype, device=device, **method.load_kwargs(cfg.method, bf16=bf16))
    method.check(model, cfg.method)
    checks = None
    before = None
    if cfg.eval.path:
        from lmtune.eval.checks import load_checks, run_checks

        checks = load_checks(cfg.eval.path)
        if cfg.eval.compare_base and not resume:
            console.print(f"Answering {len(checks)} check prompts with the base model ...")
            before = run_checks(
                model, tokenizer, checks, max_new_tokens=cfg.eval.max_new_tokens, system=cfg.data.system
            )
    from transformers import set_seed

    set_seed(cfg.train.seed)  # the method's fresh weights (LoRA A, prompts, adapters) are reproducible
    model = method.prepare(model, cfg.method)
    total, trainable = count_parameters(model)
    pct = 100 * trainable / total
    console.print(f"Method {method.name}: {trainable:,} trainable of {total:,} parameters ({pct:.3f}%)")

    # 5. Train --------------------------------------------------------------------------------
    from transformers import Trainer

    from lmtune.tokenize.dataset import PadCollator, SampleDataset
    from lmtune.train.args import training_arguments
    from lmtune.train.callbacks import MetricsCallback, ProgressCallback
    from lmtune.train.optim import build_optimizer

    metrics = MetricsCallback(run.metrics, console)
    has_val = bool(val_set.samples)
    trainer = Trainer(
        model=model,
        args=training_arguments(cfg, run, device=device, has_val=has_val),
        train_dataset=SampleDataset(train_set.samples),
        eval_dataset=SampleDataset(val_set.samples) if has_val else None,
        data_collator=PadCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[metrics, ProgressCallback(console)],
        optimizers=(build_optimizer(model, cfg), None),
    )
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_callback import ProgressCallback as HFProgress

    trainer.remove_callback(HFProgress)
    trainer.remove_callback(PrinterCallback)
    eval_before = trainer.evaluate()["eval_loss"] if has_val and not resume else None
    train_started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(run.latest_checkpoint()) if resume else None)
    train_seconds = time.perf_counter() - train_started
    eval_after = trainer.evaluate()["eval_loss"] if has_val else None

    # 6. Save and report ----------------------------------------------------------------------
    from lmtune.run.summary import plot_losses, write_summary

    method.save(model, run.root)
    tokenizer.save_pretrained(run.root)
    write_json(
        run.marker,
        {
            "lmtune_version": __version__,
            "task": "sft",
            "base_model": cfg.model.name,
            "method": method.name,
            "method_options": cfg.method.options(),
            "mergeable": method.mergeable,
            "bf16": bf16,
            "template": template,
        },
    )
    after = None
    if checks is not None:
        console.print(f"Answering {len(checks)} check prompts with the tuned model ...")
        after = run_checks(
            model, tokenizer, checks, max_new_tokens=cfg.eval.max_new_tokens, system=cfg.data.system
        )
    plot_losses(metrics.history, run.loss_plot)
    train_losses = [h["loss"] for h in metrics.history if "loss" in h]
    summary = {
        "run_dir": str(run.root),
        "model": cfg.model.name,
        "method": method.name,
        "parameters": {"total": total, "trainable": trainable, "trainable_percent": round(pct, 4)},
        "data": {
            "train_samples": len(train_set.samples),
            "val_samples": len(val_set.samples),
            "rejected": len(rejects),
        },
        "steps": output.global_step,
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "train_loss": {
            "first": train_losses[0] if train_losses else None,
            "last": train_losses[-1] if train_losses else None,
            "mean": output.training_loss,
        },
        "eval_loss": {"before": eval_before, "after": eval_after},
        "checks": {"before": before, "after": after},
    }
    write_summary(run, summary, console)
    return RunResult(run.root, summary, model)


def _load(path: str | None, cfg: RunConfig, console: Any):
    from lmtune.data.load import load_conversations, summarize_rejects

    result = load_conversations(
        path,
        format=cfg.data.format,
        columns=cfg.data.columns or None,
        on_error=cfg.data.on_error,
        system=cfg.data.system,
        limit=cfg.data.limit,
    )
    console.print(
        f"Read {path}: {result.format} format, {len(result.records)} of {result.total} records usable"
    )
    if result.rejects:
        console.print(f"[yellow]{summarize_rejects(result)}[/]")
    return result


def _write_rejects(run: RunDir, rejects: list, cfg: RunConfig, console: Any) -> None:
    from lmtune.data.load import write_rejects

    write_rejects(rejects, run.rejects)
    masking = [
        r
        for r in rejects
        if r.reason in ("no_trained_tokens", "no_trained_turn", "template_not_prefix_stable")
    ]
    if masking:
        first = masking[0]
        if cfg.data.on_error == "fail":
            raise DataError(first.message, file=first.file, record=first.record, field=first.field)
        console.print(
            f"[yellow]{len(masking)} records skipped at tokenisation (e.g. {first.reason}: "
            f"{first.message}); see {run.rejects}[/]"
        )
