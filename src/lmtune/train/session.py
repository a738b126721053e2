"""The steps every task shares, in the order a run takes them.

A task module (train/sft.py, pretrain.py, classification.py, preference.py) is a short script over
one `Session`:

    s = Session(cfg, resume=resume, console=console)     run directory + resolved config
    data = s.load_data()                                 files read, mixed, split; rejects kept
    tokenizer = s.load_tokenizer()
    ... task: tokenise data.train / data.val, call s.finish_data(...)
    model = s.load_model()                               base (or a previous run), method.check
    model = s.prepare(model)                             the method on top, counts printed
    ... task: build its trainer with s.callbacks() and s.training_args(), train
    s.save(model, tokenizer, marker_extra)               weights, tokenizer, marker
    return s.finish(summary)                             loss plot, summary.json/.md, printout
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune import __version__
from lmtune.config.loader import dump_config
from lmtune.config.schema import RunConfig
from lmtune.data.records import Reject, count_reasons
from lmtune.distributed.env import barrier, main_first
from lmtune.errors import ConfigError, DataError
from lmtune.run.layout import RunDir, is_run_dir, prepare_run_dir, write_json


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    model: Any = None  # the trained model, still in memory (for tests and the Python API)


@dataclass
class RunData:
    train: list[Any]
    val: list[Any]
    rejects: list[Reject]
    info: dict[str, Any] = field(default_factory=dict)  # goes into data_stats.json


def run_name(cfg: RunConfig) -> Path:
    if cfg.output.dir:
        return Path(cfg.output.dir)
    return Path("runs") / (cfg.output.name or "run")


class Session:
    def __init__(self, cfg: RunConfig, *, resume: bool = False, console: Any = None):
        from rich.console import Console

        from lmtune.distributed import strategy as dist_strategy
        from lmtune.distributed.env import init_distributed, launch_env

        self.cfg = cfg
        self.resume = resume
        # Under a multi-process launch only rank 0 prints and writes the run directory (distributed/).
        self.env = launch_env()
        self.console = (console or Console()) if self.env.is_main else Console(quiet=True)
        self.started = time.perf_counter()
        self.strategy = dist_strategy.resolve(cfg.distributed, self.env)
        self.trainer: Any = None  # the task's Trainer, once training ran (the final save gathers through it)
        self.trackers: list[Any] = []  # train.report_to's callbacks (closed by finish)
        self.wrap: list[str] = []  # FSDP's per-layer units (the model's _no_split_modules)
        self.find_unused = False  # DDP's find_unused_parameters (True for mixture-of-experts models)
        if self.strategy.distributed:
            from lmtune.models.load import resolve_device

            dist_strategy.require_launch(self.strategy)
            device = resolve_device(cfg.model.device)
            dist_strategy.check_supported(cfg, self.strategy, device)
            init_distributed(device)
        if resume and (
            cfg.method.name == "ptuning" or (cfg.method.name == "prefix" and cfg.method.prefix_projection)
        ):
            raise ConfigError(
                f"--resume is not possible for method {cfg.method.name} with a prompt encoder: PEFT's "
                "checkpoints keep only the encoder's output, not its weights, so training would restart it. "
                "The run directory and its checkpoints still load for chat and generate; "
                "to train further, start a new run."
            )
        from lmtune.train.trackers import check_trackers

        check_trackers(cfg.train.report_to)  # a missing tracker package, before the model loads
        self.run: RunDir = main_first(self._make_run_dir)
        self.console.print(f"[bold]Run directory:[/] {self.run.root}")
        if self.strategy.distributed:
            from lmtune.distributed.strategy import batch_line

            self.console.print(batch_line(cfg, self.strategy))
        self.method: Any = None
        self.device = "cpu"
        self.bf16 = False
        self.counts = (0, 0)
        self.metrics: Any = None
        self.parent: dict[str, Any] | None = None  # the marker of the run `model.name` points at
        self.plan: Any = None  # SpeedPlan, decided in load_model
        self.packing: dict[str, Any] | None = None  # packing stats, when samples were packed
        self.eval_data: Any = None  # eval.path's records (lmtune.eval.items.EvalData), read once
        self.eval_options: Any = None
        self.stopper: Any = None  # StopOnInterrupt (train/checkpoints.py), once a trainer exists

    def _make_run_dir(self) -> RunDir:
        """Rank 0 creates (or checks, under --resume) the run directory; the other ranks only name it."""
        if not self.env.is_main:
            return RunDir(run_name(self.cfg))
        run = prepare_run_dir(run_name(self.cfg), overwrite=self.cfg.output.overwrite, resume=self.resume)
        run.config.write_text(dump_config(self.cfg), encoding="utf-8")
        return run

    def main_first(self, fn: Any) -> Any:
        """`fn()` on rank 0 first (it fills caches), then on the other ranks (they read them)."""
        return main_first(fn)

    # -- data ---------------------------------------------------------------------------------
    def load_data(self, *, split: bool = True) -> RunData:
        """Training records (mixed when there are several files), validation records, rejects.

        `split=False` leaves data.val_size to the task (pretrain splits documents or blocks)."""
        from lmtune.data.sources import SourceSpec, load_file, load_sources
        from lmtune.data.split import split_records

        d = self.cfg.data
        sources = load_sources(d, self.cfg.task, console=self.console)
        rejects = list(sources.rejects)
        if sources.rejects:
            counts = ", ".join(f"{n} {r}" for r, n in count_reasons(sources.rejects).items())
            self.console.print(
                f"[yellow]{len(sources.rejects)} of {sources.total} records skipped: {counts} "
                f"(see {self.run.rejects})[/]"
            )
        train = sources.records
        val: list[Any] = []
        if d.val_path:
            spec = SourceSpec(
                d.val_path, Path(d.val_path).name, d.format, dict(d.columns), dict(d.roles), d.system
            )
            val_load = load_file(spec, self.cfg.task, on_error=d.on_error, text_split=d.text_split)
            rejects += val_load.rejects
            val = val_load.records
            self.console.print(f"Validation file {d.val_path}: {len(val)} of {val_load.total} records usable")
        elif d.val_size and split:
            size = int(d.val_size) if d.val_size >= 1 else d.val_size
            n = len(train)
            train, val, _ = split_records(train, val_size=size, seed=d.seed)
            self.console.print(f"Validation split: {len(val)} of {n} records")
        info = {
            "task": self.cfg.task,
            "train_file": d.path if d.path else [row["path"] for row in sources.per_dataset],
            "format": sources.formats[0] if len(sources.formats) == 1 else sources.formats,
            "records_read": sources.total,
        }
        if len(sources.per_dataset) > 1 or d.datasets:
            info["datasets"] = sources.per_dataset
            info["mix"] = d.mix
        return RunData(train, val, rejects, info)

    def write_rejects(self, rejects: list[Reject], *, stage_reasons: tuple[str, ...] = ()) -> None:
        """rejects.jsonl with every skipped record; those skipped after reading (tokenisation) are
        announced here, or stop the run under on_error: fail."""
        from lmtune.data.load import write_rejects

        if self.env.is_main:
            write_rejects(rejects, self.run.rejects)
        late = [r for r in rejects if r.reason in stage_reasons]
        if late:
            first = late[0]
            if self.cfg.data.on_error == "fail":
                raise DataError(first.message, file=first.file, record=first.record, field=first.field)
            self.console.print(
                f"[yellow]{len(late)} records skipped at tokenisation (e.g. {first.reason}: "
                f"{first.message}); see {self.run.rejects}[/]"
            )

    def finish_data(self, info: dict[str, Any], rejects: list[Reject], *, trainable: int, **late) -> None:
        """Write rejects and data_stats.json; stop when nothing is left to train on."""
        self.write_rejects(rejects, **late)
        info["rejected_by_reason"] = count_reasons(rejects)
        if self.env.is_main:
            write_json(self.run.data_stats, info)
        if not trainable:
            raise DataError(
                "no trainable samples left after validation and tokenisation",
                file=self.cfg.data.path or self.cfg.data.registry,
                hint=f"see {self.run.rejects} for the reason of each skipped record.",
            )

    # -- model --------------------------------------------------------------------------------
    def model_ref(self) -> Any:
        """Where the tokenizer (and, unless model.name is a run, the weights) come from."""
        from lmtune.models.resolve import ModelRef, resolve_model_ref

        name = self.cfg.model.name
        if is_run_dir(name):
            return ModelRef(spec=name, kind="folder", path=name, gguf_file=None, display=Path(name).name)
        return resolve_model_ref(name)

    def load_tokenizer(self) -> Any:
        from lmtune.models.load import load_tokenizer

        return load_tokenizer(self.model_ref(), trust_remote_code=self.cfg.model.trust_remote_code)

    def load_model(self, loader: Any = None, **extra: Any) -> Any:
        """The base model in float32 master weights (or the run `model.name` names), checked for the method.

        `loader(ref, dtype=, device=, **kwargs)` defaults to load_causal_lm; classification passes
        its own. Training keeps float32 master weights unless told otherwise: pure bf16 weights
        would round small updates away; bf16 speed comes from mixed precision (train.bf16).
        """
        from lmtune.methods.base import get_method
        from lmtune.models.load import load_causal_lm, resolve_device
        from lmtune.train.args import use_bf16
        from lmtune.train.plan import plan_speed

        cfg = self.cfg
        self.method = get_method(cfg.method.name)
        self.device = resolve_device(cfg.model.device)
        self.bf16 = use_bf16(cfg.train.bf16, self.device)
        self.plan = plan_speed(cfg, device=self.device, bf16=self.bf16)
        if self.plan.reasons:
            self.console.print("Speed plan: " + "; ".join(self.plan.lines()))
        self.distributed_fast_paths()
        dtype = "float32" if cfg.model.dtype == "auto" else cfg.model.dtype
        kwargs = {**self.method.load_kwargs(cfg.method, bf16=self.bf16), **extra}
        if cfg.model.trust_remote_code:
            self.console.print(
                "[yellow]model.trust_remote_code: true: Python code shipped with the model may run "
                "(recorded in summary.json and the run marker)[/]"
            )
            kwargs["trust_remote_code"] = True
        if is_run_dir(cfg.model.name):
            from lmtune.train.continue_run import load_previous_run

            model, self.parent = load_previous_run(self, cfg.model.name, dtype=dtype, loader=loader, **kwargs)
        else:
            model = (loader or load_causal_lm)(self.model_ref(), dtype=dtype, device=self.device, **kwargs)
            self.method.check(model, cfg.method)
        self.set_attention(model)
        if self.strategy.name == "ddp":
            from lmtune.distributed.strategy import unused_parameters

            self.find_unused = unused_parameters(model)
        if self.strategy.name == "fsdp":
            from lmtune.distributed.strategy import wrap_classes

            self.wrap = wrap_classes(model)
            if cfg.distributed.fsdp_wrap == "auto":
                self.console.print(
                    f"FSDP shards per {', '.join(self.wrap) or 'whole model (no _no_split_modules)'}"
                )
        return model

    def distributed_fast_paths(self) -> None:
        """Switch off the speed paths that do not combine with the strategy, one printed line for all."""
        from lmtune.distributed.strategy import fast_path_changes

        changes = fast_path_changes(self.cfg, self.strategy)
        if not changes:
            return
        if "bf16 frozen weights" in changes:
            self.plan.bf16_frozen = False
        if "torch.compile" in changes:
            self.plan.compile = False
        self.console.print(
            f"Under {self.strategy.name}: " + "; ".join(f"{k} {v}" for k, v in changes.items())
        )

    def set_attention(self, model: Any) -> None:
        """The planned attention kernel; lmtune_packed falls back to sdpa on a model that refuses
        registered kernels (one without transformers' attention-backend support)."""
        attn = self.plan.attn_implementation
        if attn in ("sdpa", "lmtune_packed") and getattr(model.config, "attn_logit_softcapping", None):
            # Gemma 2 soft-caps its attention scores (tanh); SDPA kernels cannot, transformers' eager can.
            self.console.print("Attention: eager (the model soft-caps attention scores, which SDPA cannot)")
            self.plan.attn_implementation = attn = "eager"
        if attn == getattr(model.config, "_attn_implementation", None):
            return
        if attn == "lmtune_packed":
            from lmtune.train.packed_attention import register

            register()
            try:
                model.set_attn_implementation(attn)
                return
            except (ValueError, ImportError) as err:
                self.console.print(f"Attention: sdpa ({type(model).__name__} refuses lmtune_packed: {err})")
                self.plan.attn_implementation = attn = "sdpa"
        model.set_attn_implementation(attn)

    def prepare(self, model: Any, **kw: Any) -> Any:
        """Put the method on the model (seeded, so fresh LoRA/prompt/adapter weights are reproducible)."""
        from transformers import set_seed

        from lmtune.models.load import count_parameters

        set_seed(self.cfg.train.seed)
        if self.parent is None:  # a previous run's trainable weights are already in place
            model = self.method.prepare(model, self.cfg.method, **kw)
        total, trainable = self.counts = count_parameters(model)
        self.console.print(
            f"Method {self.method.name}: {trainable:,} trainable of {total:,} parameters "
            f"({100 * trainable / total:.3f}%)"
        )
        if self.env.is_main:  # a disk too small for the checkpoints: a sentence now, not hours later
            from lmtune.train.checkpoints import check_space, checkpoint_count

            t = self.cfg.train
            count = checkpoint_count(t.save_steps, t.save_total_limit, t.max_steps)
            check_space(model, self.run, whole_model=not self.method.needs_base, checkpoints=count)
        return model

    @property
    def remote_code(self) -> bool:
        """Whether code shipped with the model may have run: model.trust_remote_code, or a parent run's."""
        return bool(self.cfg.model.trust_remote_code or (self.parent or {}).get("trust_remote_code"))

    def evaluation(self, model: Any, tokenizer: Any, *, when: str) -> dict[str, Any] | None:
        """eval.path scored as `lmtune eval` scores it: when="before" (the starting model; skipped under
        --resume or eval.compare_base: false) or "after" (the tuned model). None without eval.path."""
        cfg = self.cfg
        if not cfg.eval.path:
            return None
        from lmtune.eval.evaluate import EvalOptions, evaluate
        from lmtune.eval.items import load_eval_data
        from lmtune.infer.generate import GenerationOptions
        from lmtune.run.load import LoadedTarget

        if self.strategy.distributed:
            if when == "before":
                self.console.print(
                    f"eval.path: generation checks skipped under {self.strategy.world_size} processes; "
                    f"run `lmtune eval {self.run.root} {cfg.eval.path}` after training"
                )
            return None
        if self.eval_data is None:  # read "before" in any case: a bad file stops the run early
            self.eval_data = load_eval_data(cfg.eval.path, system=cfg.data.system)
        if when == "before" and (self.resume or not cfg.eval.compare_base):
            return None
        who = "starting" if when == "before" else "tuned"
        self.console.print(f"Evaluating the {who} model on {len(self.eval_data.items)} held-out prompts ...")
        options = self.eval_options = EvalOptions(
            metrics=list(cfg.eval.metrics),
            generation=GenerationOptions(max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.train.seed),
            batch_size=cfg.eval.batch_size,
            max_length=cfg.data.max_length,
            train_on=cfg.data.train_on,
        )
        name = "base" if when == "before" else "tuned"
        return evaluate(LoadedTarget(model, tokenizer, name), self.eval_data, options)

    def evaluation_summary(self, before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict | None:
        """The before/after comparison for the summary; the full report is written to RUN/eval/."""
        if after is None:
            return None
        from lmtune.eval.runner import assemble_doc, write_outputs

        results = {"target": after, **({"baseline": before} if before else {})}
        name = Path(self.cfg.eval.path).stem
        doc = assemble_doc(name, self.eval_options, self.eval_data, results)
        write_outputs(doc, self.eval_data, self.run.root / "eval")
        return doc

    # -- trainer ------------------------------------------------------------------------------
    def training_args(self, *, has_val: bool, args_class: Any = None, **overrides: Any) -> Any:
        from lmtune.distributed.strategy import trainer_kwargs
        from lmtune.train.args import training_arguments

        checkpointing = (
            self.plan.gradient_checkpointing if self.plan else self.cfg.train.gradient_checkpointing is True
        )
        dist = trainer_kwargs(
            self.cfg,
            self.strategy,
            device=self.device,
            wrap=self.wrap,
            checkpointing=bool(checkpointing),
            find_unused=self.find_unused,
        )
        args = training_arguments(
            self.cfg,
            self.run,
            device=self.device,
            has_val=has_val,
            args_class=args_class,
            plan=self.plan,
            **{**dist, **overrides},
        )
        return args

    def callbacks(self) -> list[Any]:
        """Metrics file and progress bar (rank 0); `quiet` adds the Ctrl-C handler to every trainer."""
        from lmtune.train.callbacks import MetricsCallback, ProgressCallback

        if not self.env.is_main:  # metrics file and progress bar: rank 0's (its logged loss is the mean)
            return []
        self.metrics = MetricsCallback(self.run.metrics, self.console)
        return [self.metrics, ProgressCallback(self.console), *self.tracker_callbacks()]

    def tracker_callbacks(self) -> list[Any]:
        """train.report_to's callbacks; after the metrics callback, which adds tokens/s to the logs."""
        from lmtune.train.trackers import tracker_callbacks

        config = self.cfg.model_dump(mode="json")
        self.trackers = tracker_callbacks(
            self.cfg.train.report_to, log_dir=str(self.run.root / "tensorboard"), run_name=self.run.root.name,
            config=config,
        )  # fmt: skip
        return self.trackers

    def quiet(self, trainer: Any) -> Any:
        """Our progress bar and metrics file replace the Trainer's own printing (and, for FSDP on
        CPU processes, the Trainer's accelerator is pointed at FSDP: distributed/env.fsdp_on_cpu)."""
        if self.strategy.name == "fsdp" and self.device == "cpu":
            from lmtune.distributed.env import fsdp_on_cpu

            fsdp_on_cpu(trainer)
        from transformers.trainer_callback import PrinterCallback
        from transformers.trainer_callback import ProgressCallback as HFProgress

        trainer.remove_callback(HFProgress)
        trainer.remove_callback(PrinterCallback)
        if not self.strategy.distributed:  # launched processes get SIGINT from their launcher
            from lmtune.train.checkpoints import StopOnInterrupt

            self.stopper = StopOnInterrupt(self.console)
            trainer.add_callback(self.stopper)
        return trainer

    def train(self, trainer: Any) -> tuple[Any, float]:
        """trainer.train(), resumed from the newest complete checkpoint under --resume; returns
        (output, seconds). Ctrl-C ends it with a checkpoint and `TrainingInterrupted`."""
        from lmtune.train.checkpoints import TrainingInterrupted

        started = time.perf_counter()
        self.trainer = trainer
        ckpt = None
        if self.resume:
            say = lambda line: self.console.print(line, highlight=False, soft_wrap=True)  # noqa: E731
            last = self.run.latest_checkpoint(report=say)
            say(f"Resuming from {last}")
            ckpt = str(last)
        try:
            output = trainer.train(resume_from_checkpoint=ckpt)
        finally:
            if self.stopper is not None:
                self.stopper.restore()  # the previous Ctrl-C handler back, whatever happened
        if self.stopper is not None and self.stopper.requested:
            raise TrainingInterrupted(trainer.state.global_step, self.run.latest_checkpoint())
        return output, time.perf_counter() - started

    def train_lm(self, model: Any, tokenizer: Any, train: Any, val: Any) -> dict[str, Any]:
        """Train a causal LM on tokenised samples (input_ids + labels) with LMTrainer, measuring the
        validation loss before (not under --resume) and after. sft and pretrain use it.

        `train` / `val` are lists of Tokenized samples or memory-mapped store views
        (lmtune.datastore.views.StoreSamples, read row by row as the DataLoader asks).

        Samples are packed into rows when the speed plan says so (pretrain blocks are rows already).
        Returns {"trainer", "output", "seconds", "eval_loss": {"before", "after"}, "speed"}.
        """
        from lmtune.train.lm_run import train_lm

        return train_lm(self, model, tokenizer, train, val)

    # -- outputs ------------------------------------------------------------------------------
    def save(self, model: Any, tokenizer: Any, **marker_extra: Any) -> None:
        """Trained weights, tokenizer and the run marker (what `load_target` reads back).

        A sharded (FSDP, ZeRO-3) model is gathered to rank 0 first, which alone writes: the run
        directory has the single-process layout whatever the launch (distributed/consolidate.py)."""
        from lmtune.distributed.consolidate import full_state_dict

        state = full_state_dict(self.trainer)  # collective: every rank takes part
        if not self.env.is_main:
            barrier()  # wait for rank 0's files, so no process reports the run finished before they exist
            return
        try:
            if state is None:
                self.method.save(model, self.run.root)
            else:
                self.method.save(model, self.run.root, state_dict=state)
            if tokenizer is not None:
                tokenizer.save_pretrained(self.run.root)
        except OSError as err:
            from lmtune.train.checkpoints import save_error

            raise save_error(err, self.run, "the final weights", self.run.root) from err
        base = self.parent["base_model"] if self.parent else self.cfg.model.name
        marker = {
            "lmtune_version": __version__,
            "task": self.cfg.task,
            "base_model": base,
            "method": self.method.name,
            "method_options": self.cfg.method.options(),
            "mergeable": self.method.mergeable,
            "bf16": self.bf16,
            **marker_extra,
        }
        if self.remote_code:  # loading the run later runs the model's code again
            marker["trust_remote_code"] = True
        if self.parent is not None:
            marker["parent_run"] = str(Path(self.cfg.model.name).resolve())
            marker["method_options"] = self.parent["method_options"]
        write_json(self.run.marker, marker)
        if self.strategy.distributed:
            barrier()

    def base_summary(self, output: Any, trainer: Any, train_seconds: float) -> dict[str, Any]:
        """The summary fields every task reports (tasks add their own metrics)."""
        total, trainable = self.counts
        history = self.metrics.history if self.metrics else []
        losses = [h["loss"] for h in history if "loss" in h]
        return {
            "run_dir": str(self.run.root),
            "task": self.cfg.task,
            "model": self.cfg.model.name,
            "method": self.method.name,
            "parameters": {
                "total": total,
                "trainable": trainable,
                "trainable_percent": round(100 * trainable / total, 4),
            },
            "trust_remote_code": self.remote_code,
            "steps": output.global_step,
            "tokens_seen": trainer.state.num_input_tokens_seen,
            "train_seconds": round(train_seconds, 1),
            "train_loss": {
                "first": losses[0] if losses else None,
                "last": losses[-1] if losses else None,
                "mean": output.training_loss,
            },
        }

    def finish(self, summary: dict[str, Any], model: Any = None) -> RunResult:
        from lmtune.run.summary import plot_losses, write_summary

        for cb in self.trackers:
            if hasattr(cb, "close"):
                cb.close()
        if not self.env.is_main:
            return RunResult(self.run.root, summary, model)
        if self.strategy.distributed:
            summary["distributed"] = {
                "strategy": self.strategy.name,
                "world_size": self.strategy.world_size,
                "zero_stage": self.strategy.zero_stage,
                "global_batch": self.cfg.train.batch_size
                * self.cfg.train.grad_accum
                * self.strategy.world_size,
            }
        if self.metrics is not None:
            plot_losses(self.metrics.history, self.run.loss_plot)
        summary["total_seconds"] = round(time.perf_counter() - self.started, 1)
        write_summary(self.run, summary, self.console)
        return RunResult(self.run.root, summary, model)
