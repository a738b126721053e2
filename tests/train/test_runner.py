"""End-to-end training on a tiny random Llama: the loss falls, the run directory is complete,
and what is saved loads back to the very same logits."""

from __future__ import annotations

import json
import random

import pytest
import torch

from lmtune.config.loader import validate_config
from lmtune.errors import ConfigError
from lmtune.run.load import load_target
from lmtune.train.runner import train


@pytest.fixture(scope="module")
def arithmetic_file(tmp_path_factory):
    rnd = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    with path.open("w") as f:
        for _ in range(24):
            a, b = rnd.randint(1, 9), rnd.randint(1, 9)
            row = {
                "messages": [
                    {"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": f"{a} plus {b} is {a + b}."},
                ]
            }
            f.write(json.dumps(row) + "\n")
        f.write('{"messages": [{"role": "user", "content": "no answer"}]}\n')
        f.write("{bad json\n")
    return path


def config(model_dir, data, out, **train):
    return validate_config(
        {
            "model": {"name": str(model_dir)},
            "data": {"path": str(data), "val_size": 4},
            "method": {"name": "full"} if train.pop("method", "lora") == "full" else {"name": "lora", "r": 8},
            "train": {"max_steps": 30, "lr": 5e-3, "batch_size": 4, "log_steps": 5, "bf16": False, **train},
            "output": {"dir": str(out)},
        }
    )


def logits(model, tokenizer):
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    model.eval()
    with torch.no_grad():
        return model(**ids).logits


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, arithmetic_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lora"
    return train(config(tiny_model_dir, arithmetic_file, out, eval_steps=10))


def test_lora_loss_falls(lora_run):
    s = lora_run.summary
    assert s["train_loss"]["last"] < s["train_loss"]["first"] - 0.3
    assert s["eval_loss"]["after"] < s["eval_loss"]["before"]
    assert s["steps"] == 30
    assert 0 < s["parameters"]["trainable"] < s["parameters"]["total"] * 0.02


def test_run_directory_is_complete(lora_run):
    root = lora_run.run_dir
    for name in (
        "config.yaml",
        "lmtune_run.json",
        "data_stats.json",
        "rejects.jsonl",
        "metrics.jsonl",
        "loss.png",
        "summary.md",
        "summary.json",
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer_config.json",
        "chat_template.jinja",
    ):
        assert (root / name).is_file(), name
    rejects = [json.loads(x) for x in (root / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in rejects) == ["invalid_json", "no_assistant_last"]
    assert all(r["line"] in (25, 26) and r["raw"] for r in rejects)
    metrics = [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]
    train_rows = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in train_rows] == [1, 5, 10, 15, 20, 25, 30]
    assert all(m["tokens_per_s"] > 0 and "learning_rate" in m for m in train_rows)
    assert [m["step"] for m in metrics if "eval_loss" in m] == [0, 10, 20, 30]
    stats = json.loads((root / "data_stats.json").read_text())
    assert stats["rejected_by_reason"] == {"no_assistant_last": 1, "invalid_json": 1}
    assert stats["train"]["samples"] == 20 and stats["validation"]["samples"] == 4
    resolved = (root / "config.yaml").read_text()
    assert "r: 8" in resolved and "lr: 0.005" in resolved and "alpha: 32" in resolved  # defaults filled


def test_adapter_round_trip_gives_identical_logits(lora_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lora_run.run_dir)
    trained = logits(lora_run.model, tok)
    # PEFT's own loader on the plain base: the run holds a standard adapter.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    untouched = logits(base, tok)
    reloaded = logits(PeftModel.from_pretrained(base, str(lora_run.run_dir)), tok)
    assert torch.equal(trained, reloaded)
    assert not torch.allclose(trained, untouched)  # the adapter really changes the model
    # lmtune's loader (used by chat/generate) resolves the run the same way.
    assert torch.equal(trained, logits(load_target(str(lora_run.run_dir), quiet=True).model, tok))


def test_full_finetune_saves_a_complete_model(tiny_model_dir, arithmetic_file, tmp_path):
    out = tmp_path / "full"
    result = train(
        config(tiny_model_dir, arithmetic_file, out, method="full", lr=1e-3, max_steps=10, log_steps=4)
    )
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 4, 8, 10]  # final step logged though 10 % 4 != 0
    assert (result.run_dir / "model.safetensors").is_file()
    assert not (result.run_dir / "adapter_config.json").exists()
    assert result.summary["parameters"]["trainable"] == result.summary["parameters"]["total"]
    assert result.summary["train_loss"]["last"] < result.summary["train_loss"]["first"]
    loaded = load_target(str(result.run_dir), quiet=True)
    assert torch.equal(logits(result.model, loaded.tokenizer), logits(loaded.model, loaded.tokenizer))


def test_resume_continues_from_latest_checkpoint(tiny_model_dir, arithmetic_file, tmp_path):
    out = tmp_path / "resumable"
    first = train(config(tiny_model_dir, arithmetic_file, out, max_steps=10, save_steps=5))
    assert first.summary["steps"] == 10
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-10", "checkpoint-5"]
    second = train(config(tiny_model_dir, arithmetic_file, out, max_steps=20, save_steps=5), resume=True)
    assert second.summary["steps"] == 20
    # save_total_limit (default 2) keeps only the newest checkpoints
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-15", "checkpoint-20"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps[0] == 1 and steps[-1] == 20 and 15 in steps  # appended after the first run's rows


def test_existing_run_directory_is_not_overwritten(lora_run, tiny_model_dir, arithmetic_file):
    from lmtune.errors import ConfigError

    with pytest.raises(ConfigError, match="already exists"):
        train(config(tiny_model_dir, arithmetic_file, lora_run.run_dir))


@pytest.mark.parametrize("method", [{"name": "ptuning"}, {"name": "prefix", "prefix_projection": True}])
def test_resume_is_refused_where_checkpoints_lack_the_prompt_encoder(
    tiny_model_dir, arithmetic_file, tmp_path, method
):
    cfg = validate_config(
        {
            "model": {"name": str(tiny_model_dir)},
            "data": {"path": str(arithmetic_file)},
            "method": method,
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    with pytest.raises(ConfigError, match="--resume is not possible for method"):
        train(cfg, resume=True)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_sft_packs_samples_and_reports_real_token_speed(lora_run):
    packing = lora_run.summary["data"]["packing"]
    assert packing["rows"] < lora_run.summary["data"]["train_samples"]  # several samples per row
    speed = lora_run.summary["speed"]
    assert speed["real_tokens"] == lora_run.summary["tokens_seen"] > 0
    assert speed["steady_tokens_per_second"] > 0 and speed["compile"] is False  # auto: off on CPU


def test_unpacked_run_groups_similar_lengths(tiny_model_dir, arithmetic_file, tmp_path, monkeypatch):
    import transformers.trainer as hf_trainer

    made = []
    real = hf_trainer.LengthGroupedSampler

    def spy(*args, **kwargs):
        made.append(kwargs.get("lengths"))
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_trainer, "LengthGroupedSampler", spy)
    cfg = config(tiny_model_dir, arithmetic_file, tmp_path / "unpacked", max_steps=4)
    cfg.data.packing, cfg.data.group_by_length = False, True
    result = train(cfg)
    assert made and "packing" not in result.summary["data"]
    assert result.summary["train_loss"]["last"] is not None
