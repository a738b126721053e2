"""task: grpo / rloo — learning from rewards on sampled answers, through TRL's GRPOTrainer / RLOOTrainer.

    rewards imported and checked        (a bad reward stops here: no run directory, no model)
    Session: run dir, prompt file read, columns the rewards need checked
    model loaded, method put on (LoRA, full, ...)
    held-out prompts (data.val_*) answered greedily and scored: the "before" rewards
    TRL samples rl.num_generations answers per prompt, scores them with the rewards (weighted sum),
      and pushes up the answers better than their group's mean (GRPO) / the others' mean (RLOO)
    the adapter (or weights) saved; held-out prompts scored again: the "after" rewards
    metrics.jsonl (reward per function, KL, length), rewards.png, completions.jsonl/.md, summary

Batch arithmetic (TRL's): train.batch_size counts *answers*, so one optimizer step sees
batch_size x grad_accum answers = that / num_generations prompts, each answered num_generations times.

The reference of the KL term (rl.beta > 0): with a PEFT method TRL switches the adapter off (the
base, no second copy); other methods get TRL's own second copy of the model loaded from the same
folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from lmtune.config.schema import RunConfig
from lmtune.errors import ConfigError
from lmtune.rl.data import read_prompts, split, to_dataset
from lmtune.rl.rewards import RECORD_COLUMN, Recorder, RewardFn, build_rewards
from lmtune.run.layout import write_json
from lmtune.train.session import RunResult, Session

# Prompt learning puts virtual tokens in front of the input; TRL's generation and log-prob passes
# do not carry them through consistently, so these methods are refused rather than trained wrongly.
REFUSED_METHODS = ("prefix", "prompt", "ptuning")


def run(cfg: RunConfig, *, resume: bool = False, console: Any = None) -> RunResult:
    from lmtune.tokenize.templates import apply_template_choice

    check_options(cfg)
    recorder = Recorder()
    rewards = build_rewards(cfg.rl.rewards, recorder)  # imports the user's functions: fail before any work
    s = Session(cfg, resume=resume, console=console)
    train, val, info = load_prompts(s, rewards)

    tokenizer = s.load_tokenizer()
    template = apply_template_choice(tokenizer, cfg.data.template)
    info["template"] = template
    model = s.load_model()
    before_checks = s.evaluation(model, tokenizer, when="before")
    before = held_out_scores(s, model, tokenizer, rewards, val) if val and not resume else None
    main = s.env.is_main  # under a multi-process launch only rank 0 writes (lmtune.distributed)
    if before is not None and main:  # kept at once: a long run stopped early still has its starting point
        write_json(s.run.root / "held_out.json", {"before": before})
    model = s.prepare(model)

    trainer = build_trainer(s, model, tokenizer, to_dataset(train, RECORD_COLUMN), rewards, recorder)
    output, seconds = s.train(trainer)

    s.save(model, tokenizer, template=template, rl_algorithm=cfg.task)
    after = held_out_scores(s, model, tokenizer, rewards, val) if val else None
    after_checks = s.evaluation(model, tokenizer, when="after")
    summary = s.base_summary(output, trainer, seconds)
    summary["data"] = {"train_samples": len(train), "val_samples": len(val), "rejected": info["rejected"]}
    summary["rl"] = cfg.rl.model_dump(mode="json")
    summary["rewards"] = reward_curve(s.metrics.history if s.metrics else [], rewards)
    if before is not None or after is not None:
        summary["held_out"] = {"before": before, "after": after}
        if main:
            write_json(s.run.root / "held_out.json", summary["held_out"])
        show_held_out(s.console, before, after)
    summary["eval"] = s.evaluation_summary(before_checks, after_checks)
    if s.metrics is not None:
        from lmtune.rl.logs import plot_rewards

        plot_rewards(s.metrics.history, s.run.root / "rewards.png")
    result = s.finish(summary, model)
    if main:
        with s.run.summary_md.open("a", encoding="utf-8") as f:
            f.write("\n" + "\n".join(summary_lines(summary)) + "\n")
    return result


# ---------------------------------------------------------------- checks and data


def check_options(cfg: RunConfig) -> None:
    """What TRL would reject late or train wrongly, refused before anything loads."""
    if cfg.method.name in REFUSED_METHODS:
        raise ConfigError(
            f"task: {cfg.task} does not support method.name={cfg.method.name}: TRL samples and scores answers "
            "without the virtual tokens prompt-learning methods add. Use lora, full, freeze, bitfit, adapter, "
            "ia3 or ln_tuning"
        )
    if cfg.rl.use_vllm:
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError(
                "rl.use_vllm: true needs the vllm package (CUDA), which is not installed. Install it "
                "(pip install vllm) or set rl.use_vllm: false to sample with transformers' generate"
            )
        if cfg.model.device == "cpu":
            raise ConfigError("rl.use_vllm: true needs a CUDA GPU, but model.device is cpu")


def load_prompts(s: Session, rewards: list[RewardFn]) -> tuple[list, list, dict[str, Any]]:
    """Training and held-out prompts; every column a reward needs must be in the file."""
    d = s.cfg.data
    assert d.path is not None  # the schema requires data.path for grpo/rloo
    read = {"columns": dict(d.columns), "system": d.system, "on_error": d.on_error}
    train, rejects, total = read_prompts(d.path, limit=d.limit, **read)
    val: list = []
    if d.val_path:
        val, val_rejects, _ = read_prompts(d.val_path, **read)
        rejects += val_rejects
    elif d.val_size:
        train, val = split(train, d.val_size, d.seed)
    have = {k for r in train for k in r.columns}
    for reward in rewards:
        reward.check_columns(have, d.path)
        for rec in train + val:  # a column present in some records only: name the first without it
            missing = [c for c in reward.columns if c not in rec.columns]
            if missing:
                reward.check_columns(set(rec.columns), rec.source)
    if rejects:
        s.console.print(f"[yellow]{len(rejects)} of {total} prompts skipped (see {s.run.rejects})[/]")
    info = {
        "task": s.cfg.task,
        "train_file": d.path,
        "records_read": total,
        "train": len(train),
        "validation": len(val),
    }
    info["columns"] = sorted(have)
    s.finish_data(info, rejects, trainable=len(train))
    info["rejected"] = len(rejects)
    s.console.print(
        f"{len(train)} training prompts, {len(val)} held-out prompts; columns: {', '.join(sorted(have)) or 'none'}"
    )
    return train, val, info


# ---------------------------------------------------------------- trainer


def build_trainer(
    s: Session, model: Any, tokenizer: Any, train_ds: Any, rewards: list[RewardFn], recorder: Recorder
) -> Any:
    """TRL's GRPOTrainer / RLOOTrainer with lmtune's arguments, optimizer and callbacks."""
    from lmtune.rl.logs import RLMetricsCallback
    from lmtune.train.callbacks import ProgressCallback
    from lmtune.train.optim import build_optimizer

    cfg, rl = s.cfg, s.cfg.rl
    if cfg.task == "grpo":
        from trl import GRPOConfig as Args
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Args
        from trl import RLOOTrainer as Trainer
    extra: dict[str, Any] = {
        "num_generations": rl.num_generations,
        "max_completion_length": rl.max_completion_length,
        "temperature": rl.temperature,
        "top_p": rl.top_p,
        "num_iterations": rl.num_iterations,
        "epsilon": rl.epsilon,
        "reward_weights": [r.weight for r in rewards],
        "use_vllm": rl.use_vllm,
        "shuffle_dataset": cfg.data.shuffle,
        "log_completions": False,  # ours: completions.jsonl / .md (TRL's prints a rich table)
    }
    if rl.beta is not None:
        extra["beta"] = rl.beta
    if rl.use_vllm:
        extra.update(vllm_mode=rl.vllm_mode, vllm_gpu_memory_utilization=rl.vllm_gpu_memory_utilization)
    args = s.training_args(has_val=False, args_class=Args, **extra)
    args.include_num_input_tokens_seen = "no"  # TRL counts its own tokens (num_tokens)
    if not _is_peft(model) and args.beta > 0:
        _check_reference_source(model)
    callbacks: list[Any] = []
    if s.env.is_main:  # metrics, completions and the progress bar: rank 0's (its own answers)
        s.metrics = RLMetricsCallback(
            s.run.metrics,
            s.console,
            recorder=recorder,
            completions=s.run.root / "completions.jsonl",
            per_log=rl.log_completions,
        )
        callbacks = [s.metrics, ProgressCallback(s.console), *s.tracker_callbacks()]
    from lmtune.train.checkpoints import atomic

    trainer = atomic(Trainer)(
        model=model,
        reward_funcs=list(rewards),
        args=args,
        train_dataset=train_ds,
        processing_class=tokenizer,
        callbacks=callbacks,
        optimizers=(build_optimizer(model, cfg), None),
    )
    return s.quiet(trainer)


def _is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _check_reference_source(model: Any) -> None:
    """Without PEFT, TRL loads the KL reference again from the model's folder: there must be one."""
    source = getattr(model.config, "_name_or_path", "")
    if not source or (
        not Path(source).is_dir() and (source.startswith((".", "/")) or source.endswith(".gguf"))
    ):
        raise ConfigError(
            "rl.beta > 0 with a method that is not a PEFT adapter needs a second copy of the starting model, "
            f"which TRL loads from its folder; this model came from {source or 'memory'!r}. Use method lora, "
            "or set rl.beta: 0"
        )


# ---------------------------------------------------------------- held-out scores and summary


def held_out_scores(
    s: Session, model: Any, tokenizer: Any, rewards: list[RewardFn], val: list
) -> dict[str, Any]:
    from lmtune.rl.evaluate import score_prompts

    s.console.print(f"Scoring {len(val)} held-out prompts (greedy answers) with the rewards ...")
    result = score_prompts(
        model, tokenizer, val, rewards, max_new_tokens=s.cfg.rl.max_completion_length, seed=s.cfg.train.seed
    )
    return result["metrics"]


def show_held_out(console: Any, before: dict | None, after: dict | None) -> None:
    keys = list((after or before or {}).keys())
    for key in keys:
        b = (before or {}).get(key)
        a = (after or {}).get(key)
        fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        console.print(f"  held-out {key}: before {fmt(b)}  after {fmt(a)}", highlight=False)


def reward_curve(history: list[dict[str, Any]], rewards: list[RewardFn]) -> dict[str, Any]:
    """First and last logged mean of each reward (and of the weighted total)."""
    out: dict[str, Any] = {}
    for key, name in [(f"rewards/{r.__name__}/mean", r.__name__) for r in rewards] + [("reward", "total")]:
        pts = [h[key] for h in history if key in h]
        if pts:
            out[name] = {"first": pts[0], "last": pts[-1]}
    return out


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The rewards section appended to summary.md (curves in rewards.png, answers in completions.md)."""
    lines = ["## Rewards", "", "| reward | first logged mean | last logged mean |", "|---|---|---|"]
    for name, v in summary["rewards"].items():
        lines.append(f"| {name} | {v['first']:.4f} | {v['last']:.4f} |")
    held = summary.get("held_out")
    if held:
        lines += [
            "",
            "Held-out prompts (greedy answers):",
            "",
            "| metric | before | after |",
            "|---|---|---|",
        ]
        for key in held["after"] or held["before"] or {}:
            b, a = (held["before"] or {}).get(key), (held["after"] or {}).get(key)
            lines.append(
                f"| {key} | {'-' if b is None else f'{b:.4f}'} | {'-' if a is None else f'{a:.4f}'} |"
            )
    lines += ["", "Curves: rewards.png; sampled answers with their rewards: completions.md"]
    return lines
