"""Score models with reward functions on held-out prompts: `lmtune eval RUN --data prompts.jsonl --rewards`.

Each prompt is answered greedily (one answer, no sampling: the score is reproducible) and the
answer is scored by the same reward functions the run trained with (read from its config.yaml,
or given on the command line). Reported: the mean of each reward, of their weighted sum, and the
accuracy (mean of exact_match / numeric_match, which are 0 or 1), for the target and for the
baseline (by default the run's base model), with every answer in eval/<name>_rewards.json.
"""

from __future__ import annotations

import gc
import math
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError
from lmtune.rl.rewards import RECORD_COLUMN, RewardFn, build_rewards


def score_prompts(
    model: Any,
    tokenizer: Any,
    records: list[Any],
    rewards: list[RewardFn],
    *,
    max_new_tokens: int,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, Any]:
    """{"metrics": {reward_<name>, reward, accuracy?}, "records": [{prompt, answer, rewards}]}."""
    from lmtune.infer.generate import GenerationOptions, generate_replies

    options = GenerationOptions(max_new_tokens=max_new_tokens, seed=seed)
    answers = generate_replies(model, tokenizer, [r.prompt for r in records], options, batch_size=batch_size)
    prompts = [r.prompt for r in records]
    completions = [[{"role": "assistant", "content": a}] for a in answers]  # TRL's conversational shape
    keys = sorted({k for r in records for k in r.columns})
    columns: dict[str, list[Any]] = {k: [r.columns.get(k) for r in records] for k in keys}
    columns[RECORD_COLUMN] = [r.source for r in records]
    from lmtune.rl.rewards import score

    values = score(rewards, prompts, completions, columns)
    metrics: dict[str, float | None] = {}
    for r in rewards:
        metrics[f"reward_{r.__name__}"] = _mean(values[r.__name__])
    metrics["reward"] = _mean(values["total"])
    accuracy = [r for r in rewards if r.is_accuracy]
    if accuracy:
        metrics["accuracy"] = _mean(values[accuracy[0].__name__])
    rows = [
        {
            "source": rec.source,
            "prompt": rec.prompt[-1]["content"],
            "answer": answers[i],
            "rewards": {name: v[i] for name, v in values.items()},
        }
        for i, rec in enumerate(records)
    ]
    return {"metrics": metrics, "records": rows}


def _mean(values: list[float | None]) -> float | None:
    real = [v for v in values if v is not None and not math.isnan(v)]
    return sum(real) / len(real) if real else None


def reward_entries(target: str, specs: list[str] | None) -> list[Any]:
    """The reward entries to score with: `specs` (built-in names, module:function, file.py:function),
    else the run's own rl.rewards."""
    from lmtune.config.schema import RewardEntry
    from lmtune.run.layout import read_run_config

    if specs:
        try:
            return [RewardEntry(reward=s) for s in specs]
        except ValueError as err:
            raise ConfigError(f"--rewards: {err}") from None
    entries = (read_run_config(target).get("rl") or {}).get("rewards") or []
    if not entries:
        raise ConfigError(
            f"--rewards: {target} is not a grpo/rloo run with rl.rewards in its config.yaml; name the rewards: "
            "--rewards numeric_match,think_format (or module:function)"
        )
    return [RewardEntry.model_validate(e) for e in entries]


def run_reward_eval(
    target: str,
    data: str,
    *,
    specs: list[str] | None = None,
    baseline: str | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    seed: int = 0,
    out_dir: str | None = None,
    name: str | None = None,
    console: Any = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Score target (and baseline) on `data`; write <out>/<name>_rewards.json and .md."""
    from lmtune.rl.data import read_prompts
    from lmtune.run.layout import is_run_dir, read_marker, read_run_config, write_json
    from lmtune.run.load import load_target

    say = console.print if console is not None else (lambda *a, **k: None)
    rewards = build_rewards(reward_entries(target, specs))
    run_config = read_run_config(target)
    run_data = run_config.get("data") or {}
    if max_new_tokens is None:  # a grpo/rloo run: the answer length its rewards were written for
        rl = run_config.get("rl") or {}
        trained = rl.get("max_completion_length") if run_config.get("task") in ("grpo", "rloo") else None
        max_new_tokens = trained or 128
    records, rejects, total = read_prompts(
        data,
        columns=run_data.get("columns") or {},
        system=run_data.get("system"),
        on_error="skip",
        limit=limit,
    )
    if not records:
        raise ConfigError(
            f"--data {data}: none of its {total} records is a usable prompt (need prompt or messages)"
        )
    have = {k for r in records for k in r.columns}
    for r in rewards:
        r.check_columns(have, data)
    if baseline is None and is_run_dir(target):
        baseline = read_marker(target).get("base_model")
        say(f"Baseline: the run's base model {baseline}")
    results: dict[str, Any] = {}
    for role, spec in (("target", target), ("baseline", baseline)):
        if spec is None:
            continue
        say(f"Loading {spec} ...")
        loaded = load_target(spec, quiet=True)
        try:
            say(f"Answering {len(records)} prompts with {loaded.name} ...")
            results[role] = {
                "model": spec,
                **score_prompts(
                    loaded.model,
                    loaded.tokenizer,
                    records,
                    rewards,
                    max_new_tokens=max_new_tokens,
                    seed=seed,
                    batch_size=batch_size,
                ),
            }
        finally:
            del loaded
            gc.collect()
    doc = {
        "name": name or Path(data).stem,
        "data": str(data),
        "prompts": len(records),
        "skipped": len(rejects),
        "rewards": [{"reward": r.spec, "name": r.__name__, "weight": r.weight} for r in rewards],
        "generation": {"greedy": True, "max_new_tokens": max_new_tokens},
        **results,
    }
    out = Path(out_dir) if out_dir else (Path(target) / "eval" if is_run_dir(target) else Path("eval"))
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{doc['name']}_rewards.json"
    write_json(json_path, doc)
    md_path = json_path.with_suffix(".md")
    md_path.write_text(markdown(doc), encoding="utf-8")
    return doc, [json_path, md_path]


def markdown(doc: dict[str, Any]) -> str:
    roles = [r for r in ("target", "baseline") if r in doc]
    lines = [f"# Rewards on {doc['name']} ({doc['prompts']} prompts, greedy answers)", ""]
    lines.append("| metric | " + " | ".join(doc[r]["model"] for r in roles) + " |")
    lines.append("|---" * (len(roles) + 1) + "|")
    for key in doc["target"]["metrics"]:
        cells = [_fmt(doc[r]["metrics"].get(key)) for r in roles]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "## Answers (first 20)", ""]
    for i, row in enumerate(doc["target"]["records"][:20]):
        lines.append(f"- **{row['prompt']}**")
        for r in roles:
            rec = doc[r]["records"][i]
            lines.append(
                f"  - {doc[r]['model']} ({_fmt(rec['rewards']['total'])}): `{rec['answer'][:200]!s}`"
            )
    return "\n".join(lines) + "\n"


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.4f}"
