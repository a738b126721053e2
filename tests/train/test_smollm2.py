"""A real pretrained model, trained for a few steps: the loss on the trained data must fall.

Uses the bundled SmolLM2-135M-Instruct GGUF through the `smollm2-135m-instruct` alias, sharing the
session's imported copy with tests/models (one dequantization per test session).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lmtune.config.loader import validate_config
from lmtune.train.runner import train

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


@pytest.mark.realmodel
def test_smollm2_lora_lowers_loss_on_its_training_data(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LMTUNE_HOME", str(tmp_path_factory.getbasetemp() / "lmtune_home_shared"))
    data = str(EXAMPLES / "identity_train.jsonl")
    cfg = validate_config(
        {
            "model": {"name": "smollm2-135m-instruct"},
            # the validation file is the training data itself: eval_loss before/after = loss on trained data
            "data": {"path": data, "val_path": data, "limit": 16, "max_length": 128},
            "method": {"name": "lora", "r": 8, "alpha": 16},
            "train": {"max_steps": 6, "batch_size": 4, "lr": 1e-3, "warmup_ratio": 0.0, "log_steps": 2},
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    result = train(cfg)
    loss = result.summary["eval_loss"]
    assert loss["after"] < loss["before"] * 0.8, loss
    assert result.summary["parameters"]["total"] > 130_000_000
    assert (result.run_dir / "adapter_model.safetensors").is_file()
