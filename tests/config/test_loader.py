"""Config loading: defaults, overrides, unknown keys with suggestions, resolved paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmtune.config.loader import apply_override, dump_config, load_config
from lmtune.config.reference import config_reference
from lmtune.config.schema import DatasetEntry, RunConfig
from lmtune.errors import ConfigError


def write(tmp_path, data, name="exp.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_filled_and_paths_resolved(tmp_path):
    cfg = load_config(write(tmp_path, {"data": {"path": "train.jsonl"}}))
    assert cfg.method.name == "lora" and cfg.method.r == 16 and cfg.train.epochs == 3.0
    assert cfg.data.path == str((tmp_path / "train.jsonl").resolve())
    assert cfg.output.name == "exp"  # the config file's name


def test_overrides_parse_yaml_values(tmp_path):
    cfg = load_config(
        write(tmp_path, {"data": {"path": "x.jsonl"}}),
        ["train.max_steps=20", "train.lr=1e-4", "method.target_modules=[q_proj, v_proj]", "train.bf16=false"],
    )
    assert cfg.train.max_steps == 20 and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.method.target_modules == ["q_proj", "v_proj"]
    assert cfg.train.bf16 is False


@pytest.mark.parametrize(
    ("data", "override", "expected"),
    [
        ({"data": {"path": "x", "max_lenght": 5}}, [], "Did you mean 'data.max_length'?"),
        ({"data": {"path": "x"}, "trian": {}}, [], "Did you mean 'train'?"),
        ({"data": {"path": "x"}}, ["train.learning_rate=1"], "Did you mean 'train.lr'?"),
        ({"data": {"path": "x"}}, ["method.name=lorax"], "method.name"),
        ({"data": {"path": "x"}}, ["train.batch_size=0"], "train.batch_size"),
        ({}, [], "data.path (one training file) or data.datasets (several) is required"),
        ({"stage": "dpo", "data": {"path": "x"}}, [], "Did you mean 'task'?"),
        ({"data": {"path": "x", "dataset_dir": "d"}}, [], "Did you mean 'data.registry'?"),
        (
            {"task": "preference", "data": {"path": "x"}},
            ["preference.pref_beta=1"],
            "Did you mean 'preference.beta'?",
        ),
        ({"data": {"path": "x"}}, ["preference.beta=0.2"], "applies to task: preference, not task: sft"),
        (
            {"task": "classification", "data": {"path": "x"}, "eval": {"path": "c"}},
            [],
            "does not apply to task: classification",
        ),
    ],
)
def test_errors_name_the_key_and_suggest(tmp_path, data, override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data), override)
    assert expected in str(err.value)


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {"data": {"path": "x"}, "method": {"rank": 8}}))
    msg = str(err.value)
    assert "unknown key 'method.rank'" in msg and "Valid keys in method: name, r, alpha" in msg


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_override({}, "train.lr")
    with pytest.raises(ConfigError, match="name a section and a key"):
        apply_override({}, "lr=1")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_dump_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, {"data": {"path": "x.jsonl"}, "train": {"lr": 0.001}}))
    again = RunConfig.model_validate(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_reference_covers_every_field():
    ref = config_reference()
    for section, sfield in RunConfig.model_fields.items():
        if section == "task":
            assert '| `task` | sft, pretrain, classification, preference, grpo, rloo | `"sft"` |' in ref
            continue
        assert f"## {section}" in ref
        for name in sfield.annotation.model_fields:
            assert f"`{section}.{name}`" in ref
    for name in DatasetEntry.model_fields:
        assert f"`data.datasets[].{name}`" in ref
    assert (
        "| `method.name` | lora, qlora, full, freeze, prefix, prompt, ptuning, adapter, bitfit, ia3, ln_tuning |"
        in ref
    )
    assert "| `method.bits` | 4, 8 | `4` | *(qlora)* Bits" in ref


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ({"name": "full", "bits": 8}, "method.bits applies to qlora, not to method.name=full"),
        ({"name": "full", "bits": 8}, "full fine-tuning cannot train quantized weights"),
        ({"name": "prefix", "use_dora": True}, "method.use_dora applies to lora, qlora"),
        ({"name": "lora", "trainable_layers": 4}, "method.trainable_layers applies to freeze"),
        ({"name": "prompt", "prompt_init": "text"}, "needs method.prompt_init_text"),
        ({"name": "lora", "freeze_trainable_layers": 2}, "Did you mean 'method.trainable_layers'?"),
    ],
)
def test_options_of_another_method_are_refused(tmp_path, method, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {"data": {"path": "x"}, "method": method}))
    assert expected in str(err.value)


def test_an_option_at_its_default_is_accepted_under_any_method(tmp_path):
    # A dumped config lists defaults; they must never count as "set for another method".
    cfg = load_config(write(tmp_path, {"data": {"path": "x"}, "method": {"name": "full", "r": 16}}))
    assert cfg.method.name == "full"


def test_dump_keeps_only_the_chosen_methods_options(tmp_path):
    cfg = load_config(
        write(tmp_path, {"data": {"path": "x"}, "method": {"name": "freeze", "trainable_layers": 3}})
    )
    dumped = yaml.safe_load(dump_config(cfg))["method"]
    assert dumped == {"name": "freeze", "trainable_layers": 3, "extra_modules": []}
    assert RunConfig.model_validate({**yaml.safe_load(dump_config(cfg))}) == cfg


def test_prefix_tuning_refuses_gradient_checkpointing(tmp_path):
    raw = {"data": {"path": "x"}, "method": {"name": "prefix"}, "train": {"gradient_checkpointing": True}}
    with pytest.raises(ConfigError, match="gradient_checkpointing does not work with method.name=prefix"):
        load_config(write(tmp_path, raw))
    raw["method"]["name"] = "prompt"
    assert load_config(write(tmp_path, raw)).train.gradient_checkpointing


def test_plain_dataset_strings_are_registry_names_or_files(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            {
                "data": {
                    "registry": "info/dataset_info.json",
                    "datasets": ["alpaca_en_demo", "belle_0.5m", "mine.jsonl"],
                }
            },
        )
    )
    assert [(d.name, d.path) for d in cfg.data.datasets] == [
        ("alpaca_en_demo", None),
        ("belle_0.5m", None),
        (None, str((tmp_path / "mine.jsonl").resolve())),
    ]
    assert cfg.data.registry == str((tmp_path / "info/dataset_info.json").resolve())
    no_registry = load_config(
        write(tmp_path, {"data": {"datasets": ["a.jsonl", {"path": "b.csv", "weight": 2}]}})
    )
    assert [Path(d.path).name for d in no_registry.data.datasets] == ["a.jsonl", "b.csv"]
    with pytest.raises(ConfigError, match="exactly one of path"):
        load_config(write(tmp_path, {"data": {"datasets": [{"path": "a.jsonl", "name": "x"}]}}))
    with pytest.raises(ConfigError, match="data.path or data.datasets, not both"):
        load_config(write(tmp_path, {"data": {"path": "a.jsonl", "datasets": ["b.jsonl"]}}))
