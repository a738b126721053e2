"""task: grpo / rloo through the real runner on the tiny random Llama: the run directory holds the
per-reward curves, sampled answers, the adapter and held-out scores; `lmtune eval --rewards`
rescores the run; mistakes stop before any model loads."""

from __future__ import annotations

import importlib.util
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
    rows = [
        {"prompt": f"What is {a} + {a + 3}? Answer with a number.", "answer": str(2 * a + 3)}
        for a in range(1, 8)
    ]
    rows.append(
        {"messages": [{"role": "user", "content": "What is 10 + 1?"}, {"role": "assistant", "content": "11"}]}
    )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def rewards_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "my_rewards.py"
    path.write_text(
        "def short(completions, **kwargs):\n"
        "    return [1.0 if len(c[0]['content']) < 20 else 0.0 for c in completions]\n"
        "def picky(completions, answer, **kwargs):\n"
        "    if any(int(a) % 2 for a in answer):\n"
        "        raise ValueError('odd answer')\n"
        "    return [0.0] * len(completions)\n"
    )
    return path


def config(
    model_dir, data, out, *, task="grpo", rewards=None, rl=None, method=None, val_size=2, **train_opts
):
    return validate_config(
        {
            "task": task,
            "model": {"name": str(model_dir)},
            "data": {"path": str(data), "max_length": 64, "val_size": val_size},
            "method": method or {"name": "lora", "r": 4},
            "rl": {
                "rewards": rewards or ["numeric_match", {"reward": "think_format", "weight": 0.5}],
                "num_generations": 2,
                "max_completion_length": 6,
                **(rl or {}),
            },
            "train": {
                "max_steps": 2,
                "batch_size": 4,
                "lr": 1e-3,
                "log_steps": 1,
                "bf16": False,
                **train_opts,
            },
            "output": {"dir": str(out)},
        }
    )


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


@pytest.fixture(scope="module")
def grpo_run(tiny_model_dir, prompts_file, rewards_file, tmp_path_factory):
    """A 2-step GRPO run with LoRA, three rewards (two built-ins, one from a file) and a KL term."""
    rewards = ["numeric_match", {"reward": "think_format", "weight": 0.5}, f"{rewards_file}:short"]
    out = tmp_path_factory.mktemp("grpo") / "run"
    return train(
        config(tiny_model_dir, prompts_file, out, rewards=rewards, rl={"beta": 0.1}), console=quiet()
    )


def test_grpo_run_writes_curves_samples_adapter_and_held_out_scores(grpo_run):
    result = grpo_run
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
    assert json.loads((run / "held_out.json").read_text()) == result.summary["held_out"]
    assert (run / "adapter_model.safetensors").is_file()
    marker = json.loads((run / "lmtune_run.json").read_text())
    assert marker["task"] == "grpo" and marker["rl_algorithm"] == "grpo"
    held = result.summary["held_out"]
    assert set(held["before"]) == {
        "reward_numeric_match",
        "reward_think_format",
        "reward_short",
        "reward",
        "accuracy",
    }
    assert held["after"]["accuracy"] == held["after"]["reward_numeric_match"]
    b = held["before"]
    assert b["reward"] == pytest.approx(
        b["reward_numeric_match"] + 0.5 * b["reward_think_format"] + b["reward_short"]
    )


def test_rloo_with_full_finetuning_and_its_kl_reference(tiny_model_dir, prompts_file, tmp_path):
    cfg = config(
        tiny_model_dir, prompts_file, tmp_path / "rloo", task="rloo", method={"name": "full"}, val_size=0
    )
    result = train(cfg, console=quiet())
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    # RLOO's default beta (0.05) measures KL against TRL's reference copy: zero before the first update
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and "rewards/numeric_match/mean" in rows[0]
    assert (result.run_dir / "model.safetensors").is_file()
    assert result.summary["rewards"]["numeric_match"]["first"] == rows[0]["rewards/numeric_match/mean"]
    assert "held_out" not in result.summary


def test_a_raising_reward_stops_training_with_its_name_and_record(
    tiny_model_dir, prompts_file, rewards_file, tmp_path
):
    cfg = config(
        tiny_model_dir, prompts_file, tmp_path / "picky", rewards=[f"{rewards_file}:picky"], val_size=0
    )
    with pytest.raises(RewardError) as err:
        train(cfg, console=quiet())
    text = str(err.value)
    assert "reward 'picky'" in text and "ValueError: odd answer" in text
    assert "on record sums.jsonl#" in text and "What is" in text


def test_missing_column_and_bad_method_stop_before_the_model_loads(tiny_model_dir, prompts_file, tmp_path):
    out = io.StringIO()
    cfg = config(
        tiny_model_dir, prompts_file, tmp_path / "col", rewards=[{"reward": "numeric_match", "column": "sol"}]
    )
    with pytest.raises(
        ConfigError, match=r"reward 'numeric_match' needs the column\(s\) sol, which .*sums.jsonl"
    ):
        train(cfg, console=Console(file=out, width=200))
    assert "Loaded" not in out.getvalue() and not (tmp_path / "col" / "lmtune_run.json").exists()
    cfg = config(tiny_model_dir, prompts_file, tmp_path / "pt", method={"name": "prompt"})
    with pytest.raises(ConfigError, match="does not support method.name=prompt"):
        train(cfg, console=quiet())
    cfg = config(tiny_model_dir, prompts_file, tmp_path / "vllm", rl={"use_vllm": True})
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match="needs the vllm package"):
            train(cfg, console=quiet())


def test_eval_rewards_scores_the_run_and_its_base(grpo_run, prompts_file, tmp_path):
    from typer.testing import CliRunner

    from lmtune.cli.app import app
    from lmtune.rl.rewards import final_answer, last_number

    out = tmp_path / "ev"
    args = ["eval", str(grpo_run.run_dir), "--data", str(prompts_file), "--rewards", "run"]
    res = CliRunner().invoke(app, [*args, "--max-new-tokens", "6", "--limit", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "sums_rewards.json").read_text())
    assert (
        doc["prompts"] == 3
        and doc["baseline"]["model"]
        == json.loads((grpo_run.run_dir / "lmtune_run.json").read_text())["base_model"]
    )
    for role in ("target", "baseline"):
        recs = doc[role]["records"]
        # numeric_match recomputed by hand from the saved answers and the file's references
        refs = [json.loads(line)["answer"] for line in prompts_file.read_text().splitlines()[:3]]
        want = [float(last_number(final_answer(r["answer"])) == float(ref)) for r, ref in zip(recs, refs)]
        assert [r["rewards"]["numeric_match"] for r in recs] == want
        assert doc[role]["metrics"]["accuracy"] == pytest.approx(sum(want) / 3)
        totals = [
            r["rewards"]["numeric_match"] + 0.5 * r["rewards"]["think_format"] + r["rewards"]["short"]
            for r in recs
        ]
        assert [r["rewards"]["total"] for r in recs] == pytest.approx(totals)
    assert (out / "sums_rewards.md").read_text().startswith("# Rewards on sums")
    # without --max-new-tokens the answers get the length the run trained with (its rewards' setting)
    res = CliRunner().invoke(app, [*args, "--limit", "1", "--out", str(tmp_path / "ev2")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "ev2" / "sums_rewards.json").read_text())
    assert doc["generation"]["max_new_tokens"] == 6  # rl.max_completion_length in config()
    res = CliRunner().invoke(app, ["eval", str(grpo_run.run_dir), "--rewards", "run"])
    # main() turns this LmtuneError into one sentence and exit code 2
    assert isinstance(res.exception, ConfigError) and "--rewards needs --data" in str(res.exception)
