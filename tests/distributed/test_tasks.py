"""Every task under a real 2-process DDP launch (gloo, CPU), checked against 1 process with the
same global batch, as tests/distributed/test_multiprocess.py does for SFT.

Why they must agree: data in file order, 2 samples per process = the two halves of the 1-process
batch of 4; pretrain's loss is divided by the trained tokens of the whole global batch, and
classification's and preference's losses are per-sample means over equal halves, so DDP's
averaged gradient is the 1-process gradient. Only the float32 summation order differs.
Preference and GRPO launches are the slowest (TRL's trainers): they are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tests.classification_helpers import save_tiny_bert, sentiment_rows, write_jsonl

from lmtune.config.loader import validate_config
from lmtune.train.runner import train

from .helpers import adapter, lmtune_train, losses

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = {
    "max_steps": 3,
    "batch_size": 4,
    "lr": 0.01,
    "log_steps": 1,
    "bf16": False,
    "warmup_ratio": 0,
    "scheduler": "constant",
    "compile": False,
}


def task_config(task: str, model: Path, data: dict, out: Path, **extra) -> dict:
    cfg = {
        "task": task,
        "model": {"name": str(model)},
        "data": {"shuffle": False, **data},
        "method": {"name": "lora", "r": 4, "dropout": 0.0},
        "train": dict(TRAIN),
        "output": {"dir": str(out)},
    }
    for key, value in extra.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


def reference_and_ddp(cfg: dict, base: Path):
    """(1-process run dir, 2-process run dir, the launch's stdout+stderr): batch 4 vs 2 x 2."""
    ref = json.loads(json.dumps(cfg))
    ref["output"]["dir"] = str(base / "ref")
    train(validate_config(ref))
    ddp = json.loads(json.dumps(cfg))
    ddp["output"]["dir"] = str(base / "ddp")
    ddp["train"]["batch_size"] = 2
    path = base / "ddp.yaml"
    path.write_text(yaml.safe_dump(ddp), encoding="utf-8")
    done = lmtune_train(path, "--nproc", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return base / "ref", base / "ddp", done.stdout + done.stderr


def assert_same_run(ref: Path, ddp: Path, log: str) -> None:
    assert "ddp over 2 process(es)" in log and "global batch 4" in log
    assert len(losses(ddp)) == TRAIN["max_steps"]
    assert losses(ddp) == pytest.approx(losses(ref), rel=1e-5)
    a, b = adapter(ddp), adapter(ref)
    assert sorted(a) == sorted(b)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-4, worst
    # training moved the adapter far beyond that tolerance (so the comparison can fail)
    assert max(v.abs().max().item() for k, v in b.items() if "lora_B" in k) > 1e-2
    # every trainable parameter is used by LoRA's forward: DDP is told so and does not warn
    assert "find_unused_parameters=True" not in log, log[-3000:]


@pytest.mark.slow  # CI time: SFT under DDP (test_multiprocess) and pretraining's blocks are tested apart
def test_pretrain_under_ddp_matches_one_process(tiny_model_dir, shared_data, tmp_path):
    text = (shared_data / "pretrain_tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    (tmp_path / "shake.txt").write_text(text[:3000], encoding="utf-8")
    data = {"path": str(tmp_path / "shake.txt"), "max_length": 32}
    cfg = task_config("pretrain", tiny_model_dir, data, tmp_path / "x")
    assert_same_run(*reference_and_ddp(cfg, tmp_path))


def test_classification_under_ddp_matches_one_process(tmp_path):
    model = save_tiny_bert(tmp_path / "bert")
    data = {"path": str(write_jsonl(tmp_path / "train.jsonl", sentiment_rows(16))), "max_length": 32}
    cfg = task_config("classification", model, data, tmp_path / "x")
    assert_same_run(*reference_and_ddp(cfg, tmp_path))


@pytest.mark.slow  # ~140 s on the loaded 2-core machine: TRL's trainer start-up in 3 processes
def test_preference_under_ddp_matches_one_process(tiny_model_dir, tmp_path):
    rows = [
        {"prompt": f"What is {a} plus {a + 2}?", "chosen": f"It is {2 * a + 2}.", "rejected": f"It is {a}."}
        for a in range(1, 13)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = task_config(
        "preference",
        tiny_model_dir,
        {"path": str(path), "max_length": 64},
        tmp_path / "x",
        preference={"loss": "sigmoid"},
    )
    assert_same_run(*reference_and_ddp(cfg, tmp_path))


def test_classification_accumulation_equals_the_whole_batch(tmp_path):
    """2 x 2 accumulated = 4 at once: the Trainer scales the per-batch mean loss by the accumulation
    (it would not, by default, for a head whose forward takes **kwargs)."""
    model = save_tiny_bert(tmp_path / "bert")
    data = {"path": str(write_jsonl(tmp_path / "train.jsonl", sentiment_rows(16))), "max_length": 32}
    runs = []
    for name, batch, accum in (("whole", 4, 1), ("accum", 2, 2)):
        cfg = task_config("classification", model, data, tmp_path / name, train={"batch_size": batch})
        cfg["train"]["grad_accum"] = accum
        cfg["train"]["max_grad_norm"] = 0.01  # clipping on: a doubled gradient would change the update
        train(validate_config(cfg))
        runs.append(tmp_path / name)
    assert losses(runs[1]) == pytest.approx(losses(runs[0]), rel=1e-5)
    a, b = adapter(runs[1]), adapter(runs[0])
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


@pytest.mark.slow  # ~120 s on the loaded 2-core machine
def test_grpo_under_ddp_runs_and_only_rank0_writes(tiny_model_dir, tmp_path):
    """GRPO samples its own answers on each process (no 1-process equality to check): it runs two
    steps on 2 processes, and rank 1 writes nothing outside checkpoints/ (metrics, completions,
    held-out scores and plots are rank 0's)."""
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"What is {a} + {a + 3}?", "answer": str(2 * a + 3)} for a in range(1, 9)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "run"
    cfg = task_config("grpo", tiny_model_dir, {"path": str(path), "max_length": 64, "val_size": 2}, out)
    cfg["rl"] = {"rewards": ["numeric_match"], "num_generations": 2, "max_completion_length": 6}
    cfg["train"].update(max_steps=2, batch_size=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    audit = tmp_path / "audit"
    audit.mkdir()
    done = lmtune_train(tmp_path / "c.yaml", "--nproc", "2", audit_dir=audit, root=out)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "ddp over 2 process(es)" in log and "find_unused_parameters=True" not in log
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("rewards/numeric_match/mean" in r for r in rows)
    assert (out / "adapter_model.safetensors").is_file() and (out / "held_out.json").is_file()
    written = (audit / "rank1.txt").read_text().split() if (audit / "rank1.txt").exists() else []
    assert all(w.startswith("checkpoints") for w in written), written
    assert (audit / "rank0.txt").read_text().split().count("metrics.jsonl") == 1  # the recorder works
