"""What a grpo/rloo run shows while it learns: metrics.jsonl rows with the reward of each function,
KL and completion length; completions.jsonl / completions.md with a few sampled answers and their
rewards per logging step; rewards.png with the curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmtune.rl.rewards import Recorder, completion_text
from lmtune.train.callbacks import MetricsCallback

# TRL's log keys worth keeping (besides rewards/<name>/mean|std), with the short name printed.
KEEP = {
    "loss": "loss",
    "learning_rate": None,
    "grad_norm": None,
    "reward": "reward",
    "reward_std": None,
    "kl": "kl",
    "entropy": None,
    "completions/mean_length": "len",
    "completions/clipped_ratio": "clipped",
    "clip_ratio/region_mean": None,
}


class RLMetricsCallback(MetricsCallback):
    """metrics.jsonl rows of the RL trainers, and sampled answers next to them."""

    def __init__(self, path: Path, console: Any, *, recorder: Recorder, completions: Path, per_log: int):
        super().__init__(path, console)
        self.recorder = recorder
        self.completions = completions
        self.per_log = per_log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        row: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        for key, value in logs.items():
            if isinstance(value, int | float) and (key in KEEP or key.startswith("rewards/")):
                row[key] = value
        if len(row) <= 2:
            return
        self.history.append(row)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        parts = [f"step {row['step']}/{state.max_steps}"]
        for key, short in KEEP.items():
            if short and key in row:
                parts.append(f"{short} {row[key]:.4g}")
        self.console.print("  " + "  ".join(parts), highlight=False)
        self.write_samples(state.global_step)

    def write_samples(self, step: int) -> None:
        r = self.recorder
        if not self.per_log or not r.fresh:
            return
        r.fresh = False
        rows = []
        for i in range(min(self.per_log, len(r.completions))):
            prompt = r.prompts[i]
            rows.append(
                {
                    "step": step,
                    "prompt": completion_text(prompt[-1:]) if isinstance(prompt, list) else prompt,
                    "completion": completion_text(r.completions[i]),
                    "rewards": {name: values[i] for name, values in r.rewards.items()},
                }
            )
        with self.completions.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        md = self.completions.with_suffix(".md")
        with md.open("a", encoding="utf-8") as f:
            f.write(f"## step {step}\n\n")
            for row in rows:
                rewards = ", ".join(
                    f"{k} {v:.3g}" if v is not None else f"{k} -" for k, v in row["rewards"].items()
                )
                f.write(
                    f"**prompt:** {row['prompt']}\n\n**answer** ({rewards}):\n\n```\n{row['completion']}\n```\n\n"
                )


def plot_rewards(history: list[dict[str, Any]], path: Path) -> None:
    """Three panels by step: each reward function's mean (and the total), KL, mean completion length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5), dpi=100)
    keys = sorted({k for h in history for k in h if k.startswith("rewards/") and k.endswith("/mean")})
    for key in [*keys, "reward"]:
        pts = [(h["step"], h[key]) for h in history if key in h]
        if pts:
            label = "total (weighted)" if key == "reward" else key.split("/")[1]
            axes[0].plot(*zip(*pts), label=label, marker="." if len(pts) < 30 else None)
    axes[0].set_title("reward (mean over sampled answers)")
    axes[0].legend(fontsize=8)
    for ax, key, title in (
        (axes[1], "kl", "KL to the starting model"),
        (axes[2], "completions/mean_length", "answer length (tokens)"),
    ):
        pts = [(h["step"], h[key]) for h in history if key in h]
        if pts:
            ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None)
        elif key == "kl":
            ax.text(0.5, 0.5, "not measured (rl.beta 0)", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
