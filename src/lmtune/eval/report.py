"""The human-readable evaluation report, in Markdown or HTML, from the eval JSON document.

The report is built once as a list of blocks (heading, paragraph, table, image) and rendered to
either format, so the two never disagree. It shows: what was evaluated, the loss curves of any run
directory involved (PNG beside the report), the metric table (with the baseline and deltas when
there is one), the records where the two models differ most, and example generations.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

Block = tuple[str, Any]

HIGHER = "↑"
LOWER = "↓"


def write_report(doc: dict[str, Any], out_dir: Path, *, formats: tuple[str, ...] = ("md",)) -> list[Path]:
    """Write <name>.md / <name>.html (and <name>_curves.png when a run directory is evaluated)."""
    name = doc["name"]
    blocks = build_blocks(doc, out_dir)
    written = [out_dir / value for kind, value in blocks if kind == "img"]  # this call's PNG, not a stale one
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        path.write_text(
            render_markdown(blocks) if fmt == "md" else render_html(blocks, name), encoding="utf-8"
        )
        written.append(path)
    return written


def build_blocks(doc: dict[str, Any], out_dir: Path, *, examples: int = 8) -> list[Block]:
    from lmtune.eval.compare import LOWER_IS_BETTER

    target, baseline, items = doc["target"], doc.get("baseline"), doc["items"]
    data = doc["data"]
    blocks: list[Block] = [("h1", f"Evaluation: {doc['name']}")]
    who = f"**{target['target']}**" + (f" vs baseline **{baseline['target']}**" if baseline else "")
    blocks.append(
        (
            "p",
            f"{who} on `{data['path']}` ({data['format']}, {data['records']} records scored"
            + (f", {data['rejects']} rejected: see {doc['name']}_rejects.jsonl" if data["rejects"] else "")
            + f"). Generation: {_generation_text(doc['options']['generation'])}. {doc['created']}.",
        )
    )
    curves = _plot_curves(doc, out_dir)
    if curves:
        blocks += [("h2", "Training curves"), ("img", curves.name)]

    blocks.append(("h2", "Metrics"))
    keys = list(dict.fromkeys([*target.get("metrics", {}), *((baseline or {}).get("metrics", {}))]))
    if baseline:
        deltas = doc["comparison"]["metrics"]
        rows = []
        for k in keys:
            d = deltas.get(k)
            mark = {"target": " (better)", "baseline": " (worse)", None: ""}[d["better"]] if d else ""
            rows.append(
                [
                    _metric_name(k, LOWER_IS_BETTER),
                    _fmt(target["metrics"].get(k)),
                    _fmt(baseline["metrics"].get(k)),
                    (_fmt(d["delta"], signed=True) + mark) if d else "-",
                ]
            )
        blocks.append(("table", (["metric", "target", "baseline", "delta"], rows)))
        r = doc["comparison"]["records"]
        blocks.append(
            (
                "p",
                f"Per record, the target is better on {r['wins']}, worse on {r['losses']}, tied on {r['ties']}.",
            )
        )
    else:
        rows = [[_metric_name(k, LOWER_IS_BETTER), _fmt(target["metrics"].get(k))] for k in keys]
        blocks.append(("table", (["metric", "value"], rows)))
    for role, result in (("target", target), ("baseline", baseline)):
        if result and result.get("classification"):
            blocks += _confusion_blocks(role, result["classification"])

    if baseline:
        for title, entries in (("Biggest wins", "wins"), ("Biggest losses", "losses")):
            chosen = doc["comparison"][entries]
            if chosen:
                blocks += [
                    ("h2", f"{title} (target vs baseline)"),
                    _examples_table(doc, [e["index"] for e in chosen], chosen),
                ]
    picked = list(range(min(examples, len(items))))
    blocks += [("h2", "Example generations"), _examples_table(doc, picked, None)]
    if "lm_eval" in doc:
        blocks += _lm_eval_blocks(doc["lm_eval"])
    blocks.append(("p", f"All numbers and every prediction: {doc['name']}.json."))
    return blocks


def _examples_table(doc: dict[str, Any], indexes: list[int], entries: list[dict] | None) -> Block:
    target, baseline, items = doc["target"], doc.get("baseline"), doc["items"]
    header = ["#", "prompt", "reference", "target"] + (["baseline"] if baseline else [])
    if entries is not None:
        header.append("decided by")
    rows = []
    for n, k in enumerate(indexes):
        item = items[k]
        prompt = item["prompt"][-1]["content"] if item["prompt"] else ""
        row = [str(k + 1), prompt, item.get("reference") or "-", _prediction(target, k)]
        if baseline:
            row.append(_prediction(baseline, k))
        if entries is not None:
            e = entries[n]
            row.append(f"{e['decided_by']} {_fmt(e['delta'], signed=True)}")
        rows.append(row)
    return ("table", (header, rows))


def _prediction(result: dict[str, Any], k: int) -> str:
    p = result["predictions"][k]
    return str(p.get("prediction", "-"))


def _confusion_blocks(role: str, c: dict[str, Any]) -> list[Block]:
    labels = c["labels"]
    rows = [[label, *[str(n) for n in row]] for label, row in zip(labels, c["confusion"])]
    return [
        ("h3", f"Confusion matrix ({role}; rows true, columns predicted)"),
        ("table", (["true / predicted", *labels], rows)),
    ]


def _lm_eval_blocks(results: dict[str, Any]) -> list[Block]:
    rows = []
    for role, tasks in results.items():
        for task, values in tasks.items():
            for metric, value in values.items():
                rows.append([role, task, metric, _fmt(value)])
    return [("h2", "lm-evaluation-harness"), ("table", (["model", "task", "metric", "value"], rows))]


def _plot_curves(doc: dict[str, Any], out_dir: Path) -> Path | None:
    """Train/validation loss of each run directory evaluated, one panel per run."""
    runs = [r for r in (doc["target"], doc.get("baseline")) if r and r.get("run_dir")]
    histories = []
    for r in runs:
        metrics = Path(r["run_dir"]) / "metrics.jsonl"
        if metrics.is_file():
            rows = [
                json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()
            ]
            histories.append((r["target"], rows))
    if not histories:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmtune.run.summary import draw_losses

    fig, axes = plt.subplots(1, len(histories), figsize=(6 * len(histories), 3.5), dpi=100, squeeze=False)
    for ax, (title, history) in zip(axes[0], histories):
        draw_losses(ax, history, title)
    fig.tight_layout()
    path = out_dir / f"{doc['name']}_curves.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _generation_text(g: dict[str, Any]) -> str:
    how = "greedy" if not g.get("temperature") else f"temperature {g['temperature']}, top_p {g['top_p']}"
    return f"{how}, max_new_tokens {g['max_new_tokens']}, seed {g.get('seed')}"


def _metric_name(key: str, lower: set[str]) -> str:
    return (
        f"{key} {LOWER if key in lower else HIGHER}"
        if key not in ("loss_records", "loss_tokens", "generated_tokens")
        else key
    )


def _fmt(x: Any, *, signed: bool = False) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:+d}" if signed else str(x)
    if isinstance(x, float):
        return f"{x:+.4f}" if signed else f"{x:.4f}"
    return str(x)


# -- rendering --------------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    """Backslashes first, so an answer's own "\\|" cannot end the cell; line breaks become spaces."""
    text = str(text).replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            out += ["#" * int(kind[1]) + " " + value, ""]
        elif kind == "p":
            out += [value, ""]
        elif kind == "img":
            out += [f"![{value}]({value})", ""]
        elif kind == "table":
            header, rows = value
            out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("")
    return "\n".join(out)


def render_html(blocks: list[Block], title: str) -> str:
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "vertical-align:top;text-align:left}th{background:#f4f4f4}"
    )
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    out.append(f"<style>{style}</style></head><body>")
    for kind, value in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{html.escape(value)}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline_html(value)}</p>")
        elif kind == "img":
            out.append(f"<img src='{html.escape(value)}' alt='{html.escape(value)}'>")
        elif kind == "table":
            header, rows = value
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            for row in rows:
                out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def _inline_html(text: str) -> str:
    """Markdown's **bold** and `code` in a paragraph, as HTML (the text itself escaped)."""
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)
