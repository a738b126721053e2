"""Safe loading: pickle weights are read as tensors only (a crafted payload is refused, not run),
safetensors win over pickle files, and code shipped with a model runs only with
model.trust_remote_code, which the run then records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lmtune.config.loader import validate_config
from lmtune.errors import ModelError
from lmtune.models.load import load_causal_lm
from lmtune.models.resolve import resolve_model_ref
from lmtune.run.layout import read_marker
from lmtune.run.load import load_target
from lmtune.train.runner import train


class Payload:
    """What a hostile pytorch_model.bin carries: unpickling it calls exec, which writes `sentinel`."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (exec, (f"open({str(self.sentinel)!r}, 'w').write('pwned')",))


def pickle_folder(tiny_model_dir: Path, out: Path, weights: dict) -> Path:
    out.mkdir()
    shutil.copy(tiny_model_dir / "config.json", out / "config.json")
    torch.save(weights, out / "pytorch_model.bin")
    return out


def test_pickle_payload_is_refused_not_executed(tiny_model_dir, tmp_path):
    sentinel = tmp_path / "pwned.txt"
    folder = pickle_folder(tiny_model_dir, tmp_path / "hostile", {"lm_head.weight": Payload(sentinel)})
    # The payload is live: plain unpickling runs it (this is what weights_only=True prevents).
    torch.load(folder / "pytorch_model.bin", weights_only=False)
    assert sentinel.read_text() == "pwned"
    sentinel.unlink()

    with pytest.raises(
        ModelError, match=r"Refused to load the model of hostile .*weights_only=True and rejected"
    ):
        load_causal_lm(resolve_model_ref(str(folder)), quiet=True)
    assert not sentinel.exists()


def test_safetensors_are_read_and_pickle_files_beside_them_ignored(tiny_model_dir, tmp_path):
    folder = tmp_path / "both"
    shutil.copytree(tiny_model_dir, folder)
    sentinel = tmp_path / "pwned.txt"
    torch.save({"lm_head.weight": Payload(sentinel)}, folder / "pytorch_model.bin")
    model = load_causal_lm(resolve_model_ref(str(folder)), quiet=True)
    assert not sentinel.exists()
    reference = load_causal_lm(resolve_model_ref(str(tiny_model_dir)), quiet=True)
    assert torch.equal(model.lm_head.weight, reference.lm_head.weight)


def test_plain_pickle_weights_still_load_as_tensors_with_a_line(tiny_model_dir, tmp_path, capsys):
    reference = load_causal_lm(resolve_model_ref(str(tiny_model_dir)), quiet=True)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    folder = pickle_folder(tiny_model_dir, tmp_path / "old_style", state)
    model = load_causal_lm(resolve_model_ref(str(folder)))
    assert "reading pytorch_model.bin (pickle) with weights_only=True" in capsys.readouterr().err
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


CONFIG_CODE = """
from pathlib import Path
from transformers import LlamaConfig

Path({sentinel!r}).write_text("the model's own code ran")


class CustomConfig(LlamaConfig):
    model_type = "lmtune_custom"
"""

MODELING_CODE = """
from transformers import LlamaForCausalLM

from .configuration_custom import CustomConfig


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
"""


@pytest.fixture
def remote_code_model(tiny_model_dir, tmp_path) -> tuple[Path, Path]:
    """The tiny Llama re-declared as a model with its own code (config.json auto_map), which
    writes a sentinel file when it is imported."""
    folder = tmp_path / "custom_model"
    shutil.copytree(tiny_model_dir, folder)
    sentinel = tmp_path / "remote_code_ran.txt"
    (folder / "configuration_custom.py").write_text(CONFIG_CODE.format(sentinel=str(sentinel)))
    (folder / "modeling_custom.py").write_text(MODELING_CODE)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "lmtune_custom"
    config["architectures"] = ["CustomForCausalLM"]
    config["auto_map"] = {
        "AutoConfig": "configuration_custom.CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder, sentinel


def run_config(model: Path, data: Path, out: Path, **model_opts) -> dict:
    return {
        "model": {"name": str(model), **model_opts},
        "data": {"path": str(data)},
        "method": {"name": "lora", "r": 4},
        "train": {"max_steps": 2, "batch_size": 4, "log_steps": 1, "bf16": False},
        "output": {"dir": str(out)},
    }


def test_remote_code_is_off_by_default_and_refused_with_a_sentence(remote_code_model, sums_file, tmp_path):
    folder, sentinel = remote_code_model
    cfg = validate_config(run_config(folder, sums_file, tmp_path / "run"))
    assert cfg.model.trust_remote_code is False
    with pytest.raises(ModelError, match=r"ships its own Python code .*set model.trust_remote_code: true"):
        train(cfg)
    assert not sentinel.exists()
    with pytest.raises(ModelError, match="ships its own Python code"):
        load_causal_lm(resolve_model_ref(str(folder)), quiet=True)
    assert not sentinel.exists()


@pytest.mark.usefixtures("one_torch_thread")
def test_remote_code_runs_when_the_config_says_so_and_the_run_records_it(
    remote_code_model, sums_file, tmp_path
):
    folder, sentinel = remote_code_model
    out = tmp_path / "run"
    result = train(validate_config(run_config(folder, sums_file, out, trust_remote_code=True)))
    assert sentinel.read_text() == "the model's own code ran"
    assert type(result.model.get_base_model()).__name__ == "CustomForCausalLM"
    assert json.loads((out / "summary.json").read_text())["trust_remote_code"] is True
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["trust_remote_code"] is True
    assert read_marker(out)["trust_remote_code"] is True


def test_runs_without_remote_code_record_it_off(tiny_model_dir, sums_file, tmp_path):
    out = tmp_path / "run"
    train(validate_config(run_config(tiny_model_dir, sums_file, out)))
    assert json.loads((out / "summary.json").read_text())["trust_remote_code"] is False
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["trust_remote_code"] is False
    assert "trust_remote_code" not in read_marker(out)

    # The same run with its adapter swapped for a hostile pickle: refused when loaded, never executed.
    sentinel = tmp_path / "pwned.txt"
    (out / "adapter_model.safetensors").unlink()
    torch.save({"base_model.model.lm_head.lora_A.weight": Payload(sentinel)}, out / "adapter_model.bin")
    with pytest.raises(ModelError, match=r"Refused to load the lora weights of run run .*weights_only=True"):
        load_target(str(out), quiet=True)
    assert not sentinel.exists()
