"""The table of benchmarks/sft_vs_trl.py: rows, lmtune/TRL ratios, the bars, as markdown.

Kept apart from the runs so the numbers and their wording can be read (and changed) in one place.
Every function takes the result dict the parent builds; a missing run or number shows as "-" (and
a bar it decides as n/a), never as a made-up value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TRL_RUNS = ("trl-defaults", "trl-tuned")
TITLES = {"lmtune": "lmtune", "trl-defaults": "TRL defaults", "trl-tuned": "TRL tuned"}


def rate(row: dict[str, Any] | None) -> float | None:
    """Steady-state real tokens/s, or the whole-loop average when no steady number exists."""
    if not row or "error" in row:
        return None
    return row.get("steady_tokens_per_second") or row.get("tokens_per_second")


def value(row: dict[str, Any] | None, key: str) -> float | None:
    return None if not row or "error" in row else row.get(key)


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """lmtune / TRL for each TRL run present: tokens/s, end-to-end, peak RSS, eval loss."""
    lm = rows.get("lmtune")
    out = {}
    for name in TRL_RUNS:
        if name in rows:
            trl = rows[name]
            out[name] = {
                "tokens_per_second": _div(rate(lm), rate(trl)),
                "end_to_end": _div(value(lm, "end_to_end_seconds"), value(trl, "end_to_end_seconds")),
                "peak_rss": _div(value(lm, "peak_rss_gib"), value(trl, "peak_rss_gib")),
                "eval_loss": _div(value(lm, "eval_loss"), value(trl, "eval_loss")),
            }
    return out


def bars(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets lmtune must meet against TRL, each PASS, FAIL or n/a (a run or number missing)."""
    lm, defaults, tuned = rows.get("lmtune"), rows.get("trl-defaults"), rows.get("trl-tuned")
    trl_losses = [value(rows.get(n), "eval_loss") for n in TRL_RUNS]
    best = min((x for x in trl_losses if x is not None), default=None)
    peaks = [x for x in (value(rows.get(n), "peak_rss_gib") for n in TRL_RUNS) if x is not None]
    checks = [
        (
            "steady real tok/s >= 4x TRL tuned (its best settings here)",
            _div(rate(lm), rate(tuned)),
            4.0,
            "x",
            True,
        ),
        ("steady real tok/s >= 4x TRL defaults", _div(rate(lm), rate(defaults)), 4.0, "x", True),
        (
            "end-to-end >= 2x faster than TRL tuned",
            _div(value(tuned, "end_to_end_seconds"), value(lm, "end_to_end_seconds")),
            2.0,
            "x",
            True,
        ),
        (
            "peak RSS <= TRL's lowest",
            _div(value(lm, "peak_rss_gib"), min(peaks, default=None)),
            1.0,
            "x",
            False,
        ),
        ("eval loss <= 1.02 x TRL's best", _div(value(lm, "eval_loss"), best), 1.02, "x", False),
    ]
    out = []
    for name, measured, target, unit, higher in checks:
        if measured is None:
            verdict = "n/a"
        else:
            verdict = "PASS" if (measured >= target if higher else measured <= target) else "FAIL"
        out.append({"bar": name, "measured": measured, "target": target, "unit": unit, "result": verdict})
    return out


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _rate_cell(row: dict[str, Any]) -> str:
    r = rate(row)
    if r is None:
        return "-"
    return f"{r:,.0f}" + ("" if row.get("steady") and row.get("steady_tokens_per_second") else "*")


def main_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    head = [
        "run",
        "steady real tok/s",
        "end-to-end s",
        "peak RSS GiB",
        "final train loss",
        "eval loss",
        "MFU",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        if "error" in r:
            cells = [r.get("label", name), "-", "-", _fmt(r.get("peak_rss_gib"), ".2f"), "-", "-", "-"]
        else:
            cells = [
                r.get("label", name),
                _rate_cell(r),
                _fmt(r.get("end_to_end_seconds"), ".1f"),
                _fmt(r.get("peak_rss_gib"), ".2f"),
                _fmt(r.get("train_loss"), ".4f"),
                _fmt(r.get("eval_loss"), ".4f"),
                _fmt(r.get("mfu"), ".2%"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The whole report: job, table, footnotes, ratios, bars, errors."""
    m, s, rows = result["machine"], result["settings"], result["rows"]
    lora = s["lora"]
    params, peaks = result.get("matmul_parameters"), result["peak_flops"]
    flags = ", ".join(k for k, v in m.get("flags", {}).items() if v) or "unknown"
    if m.get("isa"):
        flags += f"; instruction sets {m['isa']}"
    lines = [
        "# lmtune vs TRL SFTTrainer + PEFT: LoRA SFT",
        "",
        f"Date {result['date']}. Machine: {m['cpu']} ({flags}), {m['cores']} cores, {m['threads']} torch threads per run; "
        f"Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}, "
        f"peft {m['peft']}.",
        "",
        f"Job: `{Path(s['model']).name}`; the first {s['records']} records of `{Path(s['data']).name}` for "
        f"training, the next {s['eval_records']} held out; LoRA r={lora['r']} alpha={lora['alpha']} "
        f"dropout={lora['dropout']} on {','.join(lora['target_modules'])}; max_length {s['max_length']}, "
        f"batch {s['batch_size']}, 1 epoch, lr {s['learning_rate']:g}, seed {s['seed']}.",
        "",
        *main_table(rows),
        "",
        "- steady real tok/s: non-padding tokens of the (truncated) samples per second of training, one "
        "clock for every run (a callback on each tool's Trainer: a step runs from the previous step's end "
        "to its own, data loading included), after warm-up (the first max(2, 25%) optimizer steps) and "
        "without one-off stalls (a step over 3x the median, e.g. torch.compile switched on mid-run). TRL's "
        "tokens are counted from each batch it trains on, lmtune's by its Trainer's non-padding count. "
        "`*`: whole-loop average instead (too few steps to leave warm-up out).",
        "- end-to-end: from the child process's start (interpreter and imports) until training is done and "
        "the adapter saved: data preprocessing, model load, compile, held-out loss before and after "
        "training (both tools do it), one epoch.",
        f"- MFU: steady tok/s x 4 x N / peak. N = {_fmt(params, ',')}: the base model's parameters that "
        f"multiply activations (of {_fmt(result.get('parameters'), ',')}: an input embedding is a lookup "
        "and counts only when tied to the output head). 4N FLOPs per token is a LoRA step: 2N forward and "
        "2N for the input gradients, the frozen weights get none (the dense 6N convention would add "
        "2N); attention scores and the adapters' own small matmuls are left out, and lmtune computes "
        "the output head only at trained positions, so its real count is a little lower. Peak of the "
        f"precision each run trained in: float32 "
        f"{peaks['float32'] / 1e9:.1f}, bf16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s (2048x2048 matmuls for "
        "~2 s each with the runs' thread count, just before the runs).",
        f"- eval loss: mean cross-entropy per answer token of the {s['eval_records']} held-out records "
        "(chat template, float32, batch 1, trained adapter applied), one function for every run; base "
        f"model before training: {_fmt(result.get('base_eval_loss'), '.4f')}. Final train loss: each "
        "tool's own last logged value.",
    ]
    counted = [
        f"{TITLES[n]} {r['real_tokens']:,}" for n, r in rows.items() if r.get("real_tokens") is not None
    ]
    if result.get("train_real_tokens") is not None and counted:
        lines.append(
            f"- real tokens in one epoch, by the harness's own tokenisation: {result['train_real_tokens']:,} "
            f"({_fmt(result.get('train_real_tokens_with_answer'), ',')} in samples with an answer token left "
            f"after truncation); counted by the runs: {', '.join(counted)}."
        )
    own = value(rows.get("lmtune"), "own_speed") or {}
    if own.get("steady_tokens_per_second"):
        lines.append(
            f"- lmtune's own speed report (summary.json, its steady window): "
            f"{own['steady_tokens_per_second']:,.0f} steady, {own.get('tokens_per_second') or 0:,.0f} average "
            "real tok/s."
        )
    ratio = result["ratios"]
    if ratio:
        lines += [
            "",
            "| lmtune / ... | steady tok/s | end-to-end s | peak RSS | eval loss |",
            "|---|---|---|---|---|",
        ]
        for name, r in ratio.items():
            cells = [_fmt(r[k], ".2f") for k in ("tokens_per_second", "end_to_end", "peak_rss", "eval_loss")]
            lines.append(f"| {TITLES[name]} | " + " | ".join(cells) + " |")
    lines += ["", "| bar | measured | result |", "|---|---|---|"]
    for b in result["bars"]:
        lines.append(f"| {b['bar']} | {_fmt(b['measured'], '.2f')}{b['unit']} | {b['result']} |")
    errors = [(n, r["error"]) for n, r in rows.items() if "error" in r]
    if result.get("eval_error"):
        errors.append(("held-out loss", result["eval_error"]))
    if errors:
        lines += ["", "Errors:", ""]
        lines += [f"- {TITLES.get(n, n)}: {' '.join(str(e).split())[:400]}" for n, e in errors]
    lines += ["", "Re-run: `python benchmarks/sft_vs_trl.py` (`--help` for a smaller job).", ""]
    return "\n".join(lines)
