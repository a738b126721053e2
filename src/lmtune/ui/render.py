"""HTML pieces the tabs show: trained-token highlighting, the length histogram, the loss curve,
and reports as tables. Plain strings, so they are tested without a browser and need no plotting
library in the page (an SVG polyline the end-to-end test can count the points of)."""

from __future__ import annotations

import html
import json
from typing import Any

TRAINED_STYLE = "background:#1f6f3f;color:#fff;font-weight:600;border-radius:2px"
CONTEXT_STYLE = "color:#777"


def highlighted(runs: list[tuple[str, bool]]) -> str:
    """Runs of (text, trained) as <span class="lt-trained|lt-context">, the way `data inspect`
    colours them in the terminal."""
    parts = []
    for text, trained in runs:
        cls, style = ("lt-trained", TRAINED_STYLE) if trained else ("lt-context", CONTEXT_STYLE)
        parts.append(f'<span class="{cls}" style="{style}">{html.escape(text)}</span>')
    legend = (
        f'<div class="lt-legend"><span style="{TRAINED_STYLE}">trained tokens</span> vs '
        f'<span style="{CONTEXT_STYLE}">context (label -100)</span></div>'
    )
    body = "".join(parts)
    return f'{legend}<pre class="lt-example" style="white-space:pre-wrap;font-size:13px">{body}</pre>'


def histogram(buckets: dict[str, int]) -> str:
    """Horizontal bars, one per power-of-two length bucket."""
    if not buckets:
        return "<p>No usable samples.</p>"
    top = max(buckets.values()) or 1
    rows = []
    for label, n in buckets.items():
        width = max(1, round(300 * n / top))
        rows.append(
            f'<tr><td style="padding-right:8px">{html.escape(label)} tokens</td>'
            f'<td><div class="lt-bar" style="background:#3b82f6;height:12px;width:{width}px"></div></td>'
            f'<td style="padding-left:6px">{n}</td></tr>'
        )
    return f'<table class="lt-histogram">{"".join(rows)}</table>'


def loss_svg(rows: list[dict[str, Any]], *, width: int = 520, height: int = 220) -> str:
    """Training (and validation) loss against step as an inline SVG; `data-points` says how many
    training points are drawn."""
    train = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float))]
    val = [(r["step"], r["eval_loss"]) for r in rows if isinstance(r.get("eval_loss"), (int, float))]
    if not train and not val:
        return '<div class="lt-loss" data-points="0"><p>No loss logged yet.</p></div>'
    pts = train + val
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 36

    def xy(step: float, loss: float) -> str:
        x = pad + (width - 2 * pad) * (step - x0) / (x1 - x0)
        y = height - pad - (height - 2 * pad) * (loss - y0) / (y1 - y0)
        return f"{x:.1f},{y:.1f}"

    lines = []
    for series, color, cls in ((train, "#2563eb", "lt-train-loss"), (val, "#f59e0b", "lt-eval-loss")):
        if series:
            points = " ".join(xy(s, v) for s, v in series)
            lines.append(
                f'<polyline class="{cls}" fill="none" stroke="{color}" stroke-width="2" points="{points}"/>'
            )
    axis = (
        f'<text x="{pad}" y="{height - 8}" font-size="11">step {x0}</text>'
        f'<text x="{width - pad}" y="{height - 8}" font-size="11" text-anchor="end">step {x1}</text>'
        f'<text x="4" y="{pad - 8}" font-size="11">loss {y1:.3f}</text>'
        f'<text x="4" y="{height - pad + 14}" font-size="11">{y0:.3f}</text>'
    )
    legend = f'<text x="{width - 160}" y="14" font-size="11" fill="#2563eb">train loss</text>'
    if val:
        legend += f'<text x="{width - 80}" y="14" font-size="11" fill="#f59e0b">eval loss</text>'
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'style="background:#fff;border:1px solid #ddd">{axis}{legend}{"".join(lines)}</svg>'
    )
    return f'<div class="lt-loss" data-points="{len(train)}">{svg}</div>'


def report_table(report: dict[str, Any], *, skip: tuple[str, ...] = ()) -> str:
    """A flat JSON report (parity, verification) as a markdown table; nested values as JSON."""
    lines = ["| check | value |", "|---|---|"]
    for key, value in report.items():
        if key in skip:
            continue
        shown = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
        if len(shown) > 160:
            shown = shown[:157] + "..."
        lines.append(f"| {key} | {shown.replace('|', '/')} |")
    return "\n".join(lines)


def code_block(text: str, lang: str = "") -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}{lang}\n{text}\n{fence}"
