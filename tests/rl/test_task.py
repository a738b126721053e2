"""task: grpo / rloo through the real runner on the tiny random Llama: the run directory holds the
per-reward curves, sampled answers, the adapter and held-out scores; `lmtune eval --rewards`
rescores the run; mistakes stop before any model loads."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from lmtune.config.loader import validate_config
from lmtune.errors import ConfigError
from lmtune.rl.rewards import RewardError
from lmtune.train.runner import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    """Sums with their answers; one record as OpenAI messages (its assistant turn becomes `answer`)."""
    path = tmp_path_factory.mktemp("prompts") / "sums.jsonl"
    rows = [{"prompt": f"What is {a} + {a + 3}? Answer with a number.", "answer": str(2 * a + 3)} for a in range(1, 8)]
    rows.append({"messages": [{"role": "user", "content": "What is 10 + 1?"}, {"role": "assistant", "content": "11"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def rewards_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "my_rewards.py"
    path.write_text(
        "def short(completions, **kwargs):\n"
        "    return [1.0 if len(c[0]['content']) < 20 else 0.0 for c in completions]\n"
        "def broken(completions, answer, **kwargs):\n"
        "    return [1.0 / (int(a) - 11) for a in answer]\n"
    )
    return path


def config(model_dir, data, out, *, task="grpo", rewards=None, rl=None, method=None, **train_opts):
    return validate_config(
        {
            "task": task,
            "model": {"name": str(model_dir)},
            "data": {"path": str(data), "max_length": 64, "val_size": 2},
            "method": method or {"name": "lora", "r": 4},
            "rl": {
                "rewards": rewards or ["numeric_match", {"reward": "think_format", "weight": 0.5}],
                "num_generations": 2,
                "max_completion_length": 6,
                **(rl or {}),
            },
            "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "log_steps": 1, "bf16": False, **train_opts},
            "output": {"dir": str(out)},
        }
    )


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_grpo_run_writes_curves_samples_adapter_and_held_out_scores(tiny_model_dir, prompts_file, rewards_file, tmp_path):
    rewards = ["numeric_match", {"reward": "think_format", "weight": 0.5}, f"{rewards_file}:short"]
    result = train(config(tiny_model_dir, prompts_file, tmp_path / "run", rewards=rewards, rl={"beta": 0.1}), console=quiet())
    run = result.run_dir
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for name in ("numeric_match", "think_format", "short"):
            assert f"rewards/{name}/mean" in row
        assert "kl" in row and "completions/mean_length" in row and "loss" in row
        assert 0 < row["completions/mean_length"] <= 6
    samples = [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2} and len(samples) == 8  # 4 per logging step
    for s in samples:  # the recorded rewards are the built-ins' values for that very answer
        assert set(s["rewards"]) == {"numeric_match", "think_format", "short"}
        assert s["rewards"]["short"] == (1.0 if len(s["completion"]) < 20 else 0.0)
        assert s["rewards"]["think_format"] == 0.0  # a random model writes no <think> block
    assert (run / "completions.md").read_text().startswith("## step 1")
    assert (run / "rewards.png").stat().st_size > 0
    assert (run / "adapter_model.safetensors").is_file()
    marker = json.loads((run / "lmtune_run.json").read_text())
    assert marker["task"] == "grpo" and marker["rl_algorithm"] == "grpo"
    held = result.summary["held_out"]
    assert set(held["before"]) == {"reward_numeric_match", "reward_think_format", "reward_short", "reward", "accuracy"}
    assert held["after"]["accuracy"] == held["after"]["reward_numeric_match"]
    b = held["before"]
    assert b["reward"] == pytest.approx(b["reward_numeric_match"] + 0.5 * b["reward_think_format"] + b["reward_short"])
