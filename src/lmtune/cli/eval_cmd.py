"""`lmtune eval TARGET --data FILE [--baseline TARGET2]`: score a model, side by side with another."""

from __future__ import annotations

from pathlib import Path

import typer

from lmtune.cli.infer_cmd import TARGET_HELP
from lmtune.errors import ConfigError


def eval(  # noqa: A001 - the command is called eval
    target: str = typer.Argument(..., help=TARGET_HELP),
    data: Path | None = typer.Option(
        None,
        "--data",
        "-d",
        help="Records to score: check jsonl {prompt, reference, contains}, any chat/instruction format "
        "lmtune trains on, or labelled text {text, label} / csv / tsv.",
    ),
    baseline: str | None = typer.Option(
        None, "--baseline", "-b", help="A second target scored on the same records, shown side by side."
    ),
    metrics: str = typer.Option(
        "auto",
        "--metrics",
        "-m",
        help="Comma list: loss, perplexity, exact_match, contains, bleu, rouge, accuracy, f1, speed; "
        "auto = what the data supports.",
    ),
    name: str | None = typer.Option(
        None, help="Output name: eval/<name>.json; default the data file's stem."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder; default TARGET/eval for a run directory, else ./eval."
    ),
    report: str = typer.Option("md", help="Report format(s): md, html or md,html."),
    max_new_tokens: int | None = typer.Option(
        None,
        help="Longest generated answer in tokens; default 128, or with --rewards on a grpo/rloo run the "
        "answer length it trained with (rl.max_completion_length), which its rewards were written for.",
    ),
    temperature: float = typer.Option(0.0, help="0 = greedy (the default); higher = sampling."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass (with temperature > 0)."),
    stop: list[str] = typer.Option([], "--stop", help="Cut answers before this string (repeat)."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same generations."),
    batch_size: int = typer.Option(8, min=1, help="Prompts generated together (left-padded)."),
    limit: int | None = typer.Option(None, min=1, help="Score only the first N records."),
    normalize: str = typer.Option(
        "lower,punctuation,whitespace",
        help="exact_match normalisation, comma list of lower, punctuation, articles, whitespace; none = raw.",
    ),
    labels: str | None = typer.Option(
        None, help="Fixed label set for accuracy/f1 (comma list); default the labels found in the data."
    ),
    prompt_template: str = typer.Option(
        "{text}", help="How labelled text becomes the prompt, e.g. 'Sentiment of: {text}\\nAnswer:'."
    ),
    system: str | None = typer.Option(None, help="System prompt; default the run's data.system."),
    max_length: int | None = typer.Option(
        None, min=1, help="Token limit for loss; default the run's data.max_length, else 1024."
    ),
    lm_eval: str | None = typer.Option(
        None,
        "--lm-eval",
        help="lm-evaluation-harness tasks (comma list of names or task YAML files); needs lmtune[lm-eval].",
    ),
    lm_eval_limit: int | None = typer.Option(None, min=1, help="lm-eval: documents per task."),
    lm_eval_fewshot: int | None = typer.Option(None, min=0, help="lm-eval: few-shot examples."),
    rewards: str | None = typer.Option(
        None,
        "--rewards",
        help="Score greedy answers to the --data prompts with reward functions: 'run' (the grpo/rloo run's "
        "rl.rewards) or a comma list (numeric_match, think_format, module:function, file.py:function). "
        "Baseline: --baseline, else the run's base model.",
    ),
) -> None:
    """Score a model on your records (loss, exact match, BLEU/ROUGE, accuracy/F1, speed), optionally
    against a baseline, and write eval/<name>.json plus a report."""
    from rich.console import Console

    from lmtune.eval.evaluate import EvalOptions
    from lmtune.eval.runner import EvalRequest, run_eval
    from lmtune.infer.generate import GenerationOptions

    if rewards is not None:
        return _reward_eval(
            target, data, rewards, baseline, max_new_tokens, batch_size, limit, seed, out, name
        )
    formats = tuple(dict.fromkeys(f.strip() for f in report.split(",") if f.strip()))
    if not formats or set(formats) - {"md", "html"}:
        raise ConfigError(f"--report {report!r}: choose md, html or md,html")
    options = EvalOptions(
        metrics=_split(metrics) or ["auto"],
        generation=GenerationOptions(
            max_new_tokens=max_new_tokens or 128,
            temperature=temperature,
            top_p=top_p,
            stop=list(stop),
            seed=seed,
        ),
        batch_size=batch_size,
        max_length=max_length,
        normalize=parse_normalize(normalize),
    )
    console = Console(stderr=True)
    outcome = run_eval(
        EvalRequest(
            target=target,
            data=str(data) if data else None,
            baseline=baseline,
            options=options,
            name=name,
            out_dir=str(out) if out else None,
            formats=formats,
            limit=limit,
            labels=_split(labels) if labels else None,
            prompt_template=prompt_template,
            system=system,
            lm_eval_tasks=_split(lm_eval) if lm_eval else [],
            lm_eval_limit=lm_eval_limit,
            lm_eval_fewshot=lm_eval_fewshot,
        ),
        console=console,
    )
    print_outcome(outcome.doc, console)
    for path in outcome.written:
        typer.echo(f"Wrote {path}")


def _reward_eval(
    target: str,
    data: Path | None,
    rewards: str,
    baseline: str | None,
    max_new_tokens: int | None,
    batch_size: int,
    limit: int | None,
    seed: int,
    out: Path | None,
    name: str | None,
) -> None:
    """`--rewards`: mean reward and accuracy per model (lmtune.rl.evaluate)."""
    from rich.console import Console
    from rich.table import Table

    from lmtune.rl.evaluate import run_reward_eval

    if data is None:
        raise ConfigError(
            "--rewards needs --data: a prompt file (prompt or messages, plus the columns the rewards read)"
        )
    console = Console(stderr=True)
    specs = None if rewards.strip() == "run" else _split(rewards)
    doc, written = run_reward_eval(
        target,
        str(data),
        specs=specs,
        baseline=baseline,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        limit=limit,
        seed=seed,
        out_dir=str(out) if out else None,
        name=name,
        console=console,
    )
    roles = [r for r in ("target", "baseline") if r in doc]
    table = Table(title=f"Rewards: {doc['name']} ({doc['prompts']} prompts)")
    table.add_column("metric")
    for r in roles:
        table.add_column(doc[r]["model"])
    for key in doc["target"]["metrics"]:
        table.add_row(
            key,
            *(f"{doc[r]['metrics'][key]:.4f}" if doc[r]["metrics"][key] is not None else "-" for r in roles),
        )
    console.print(table)
    for path in written:
        typer.echo(f"Wrote {path}")


def parse_normalize(text: str) -> dict[str, bool]:
    from lmtune.eval.metrics import NORMALIZE_OPTIONS

    chosen = set(_split(text))
    if chosen == {"none"}:
        return {k: False for k in NORMALIZE_OPTIONS}
    unknown = chosen - set(NORMALIZE_OPTIONS)
    if unknown:
        raise ConfigError(
            f"--normalize: unknown option(s) {sorted(unknown)}; use a comma list of "
            f"{', '.join(NORMALIZE_OPTIONS)}, or none"
        )
    return {k: k in chosen for k in NORMALIZE_OPTIONS}


def print_outcome(doc: dict, console: object) -> None:
    """The metric table (and per-record wins/losses) in the terminal."""
    from rich.table import Table

    from lmtune.eval.report import _fmt

    if "target" in doc:
        base = doc.get("baseline")
        table = Table(title=f"Evaluation: {doc['name']}")
        table.add_column("metric")
        table.add_column(doc["target"]["target"])
        if base:
            table.add_column(base["target"])
            table.add_column("delta")
        deltas = (doc.get("comparison") or {}).get("metrics", {})
        for key, value in doc["target"].get("metrics", {}).items():
            if key in ("loss_records", "loss_tokens"):  # bookkeeping: in the JSON and the report
                continue
            row = [key, _fmt(value)]
            if base:
                d = deltas.get(key)
                row += [_fmt(base["metrics"].get(key)), _fmt(d["delta"], signed=True) if d else "-"]
            table.add_row(*row)
        console.print(table)  # type: ignore[attr-defined]
        if base:
            r = doc["comparison"]["records"]
            console.print(  # type: ignore[attr-defined]
                f"Per record: target better on {r['wins']}, worse on {r['losses']}, tied on {r['ties']}"
            )
    for role, tasks in (doc.get("lm_eval") or {}).items():
        for task, values in tasks.items():
            shown = ", ".join(f"{k} {_fmt(v)}" for k, v in values.items() if not k.endswith("stderr"))
            console.print(f"lm-eval {role} {task}: {shown}")  # type: ignore[attr-defined]


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]
