"""Two stages: SFT on a tiny model, then DPO with `model.name` set to the SFT run directory. The DPO
run starts from the SFT adapter, scores against the SFT policy, records its parent and the
original base, and reloads to the same logits."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from lmtune.config.loader import validate_config
from lmtune.errors import ConfigError
from lmtune.run.load import load_target
from lmtune.train.runner import train
from lmtune.train.session import Session

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [
        {
            "prompt": f"What is {a} plus {b}?",
            "chosen": f"{a} plus {b} is {a + b}.",
            "rejected": f"{a} plus {b} is 0.",
        }
        for a in range(1, 7)
        for b in (2,)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_config(model_dir, data, out, method="lora"):
    return validate_config(
        {
            "model": {"name": str(model_dir)},
            "data": {"path": str(data), "max_length": 64},
            "method": {"name": "lora", "r": 4, "alpha": 8} if method == "lora" else {"name": method},
            "train": {"max_steps": 4, "lr": 1e-2, "batch_size": 4, "log_steps": 2, "bf16": False},
            "output": {"dir": str(out)},
        }
    )


def dpo_config(parent, data, out, method="lora", **data_extra):
    return validate_config(
        {
            "task": "preference",
            "model": {"name": str(parent)},
            "data": {"path": str(data), "max_length": 64, **data_extra},
            "method": {"name": method},  # options come from the parent run
            "preference": {"loss": "sigmoid"},
            "train": {"max_steps": 3, "lr": 1e-2, "batch_size": 3, "log_steps": 1, "bf16": False},
            "output": {"dir": str(out)},
        }
    )


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, sums_file, tmp_path_factory):
    return train(
        sft_config(tiny_model_dir, sums_file, tmp_path_factory.mktemp("runs") / "sft"), console=quiet()
    )


def lora_weights(model) -> dict[str, torch.Tensor]:
    """The default adapter's weights under PEFT's saved names (no adapter name in them)."""
    return {
        n.replace(".default", ""): p.detach().clone() for n, p in model.named_parameters() if ".default." in n
    }


def test_dpo_starts_from_the_sft_adapter(sft_run, pairs_file, tmp_path):
    console = quiet()
    s = Session(dpo_config(sft_run.run_dir, pairs_file, tmp_path / "probe"), console=console)
    model = s.prepare(s.load_model())
    said = " ".join(console.file.getvalue().split())
    assert "Method options come from the run" in said and "'r': 4" in said  # the config's r=16 is not used
    saved = load_file(str(sft_run.run_dir / "adapter_model.safetensors"))
    start = lora_weights(model)
    assert set(start) == set(saved) and all(torch.equal(start[k], saved[k]) for k in saved)
    assert all(p.requires_grad for n, p in model.named_parameters() if ".default." in n)
    assert s.parent["method"] == "lora" and s.counts[1] == sum(t.numel() for t in saved.values())
    assert model.peft_config["default"].r == 4  # the parent's rank, not the config default (8)


def test_dpo_on_an_sft_run(sft_run, pairs_file, tmp_path, tiny_model_dir):
    result = train(
        dpo_config(sft_run.run_dir, pairs_file, tmp_path / "dpo", val_path=str(pairs_file)), console=quiet()
    )
    margin = result.summary["metrics"]["reward_margin"]
    # the reference is the SFT policy (TRL's copy of the starting adapter): margin 0 before training
    assert margin["before"] == pytest.approx(0.0, abs=1e-6) and margin["after"] > 0
    marker = json.loads((result.run_dir / "lmtune_run.json").read_text())
    assert marker["parent_run"] == str(sft_run.run_dir.resolve())
    assert marker["base_model"] == str(tiny_model_dir) and marker["method"] == "lora"
    assert marker["method_options"]["r"] == 4 and marker["task"] == "preference"
    assert not (result.run_dir / "ref").exists()
    # the new adapter differs from the SFT one and applies to the original base
    saved, sft = (load_file(str(d / "adapter_model.safetensors")) for d in (result.run_dir, sft_run.run_dir))
    assert set(saved) == set(sft) and any(not torch.equal(saved[k], sft[k]) for k in saved)
    loaded = load_target(str(result.run_dir), quiet=True)
    ids = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 2?"}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )  # fmt: skip
    with torch.no_grad():
        assert torch.equal(result.model.eval()(**ids).logits, loaded.model(**ids).logits)


def test_method_must_match_the_parent(sft_run, pairs_file, tmp_path):
    with pytest.raises(ConfigError, match="trained with method lora, but this config asks for method full"):
        train(dpo_config(sft_run.run_dir, pairs_file, tmp_path / "mismatch", method="full"), console=quiet())


def test_full_parent_is_loaded_as_the_starting_model(tiny_model_dir, sums_file, pairs_file, tmp_path):
    parent = train(
        sft_config(tiny_model_dir, sums_file, tmp_path / "full_sft", method="full"), console=quiet()
    )
    s = Session(dpo_config(parent.run_dir, pairs_file, tmp_path / "probe", method="full"), console=quiet())
    model = s.prepare(s.load_model())
    trained = parent.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    assert s.counts[0] == s.counts[1]  # everything trains again


def test_classification_does_not_continue_from_a_run(sft_run, tmp_path):
    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps({"text": f"text {i}", "label": i % 2}) + "\n" for i in range(8)))
    cfg = validate_config(
        {
            "task": "classification",
            "model": {"name": str(sft_run.run_dir)},
            "data": {"path": str(data), "max_length": 32},
            "train": {"max_steps": 1},
            "output": {"dir": str(tmp_path / "cls")},
        }
    )
    with pytest.raises(ConfigError, match="not for task: classification"):
        train(cfg, console=quiet())
