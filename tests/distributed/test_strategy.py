"""The `distributed:` section: validation sentences, and its translation into TrainingArguments."""

from __future__ import annotations

import json

import pytest

from lmtune.config.loader import validate_config
from lmtune.distributed.env import LaunchEnv
from lmtune.distributed.launch import child_command, torchrun_argv
from lmtune.distributed.strategy import (
    check_supported,
    deepspeed_config,
    fast_path_changes,
    fsdp_config,
    resolve,
    trainer_kwargs,
    wrap_classes,
)
from lmtune.errors import ConfigError


def cfg(**dist):
    method = dist.pop("method", {"name": "lora"})
    task = dist.pop("task", "sft")
    rl = {"rl": {"rewards": ["numeric_match"]}} if task in ("grpo", "rloo") else {}
    return validate_config(
        {
            "task": task,
            "model": {"name": "m"},
            "data": {"path": "d.jsonl"},
            "method": method,
            "distributed": dist,
            **rl,
        }
    )


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"strategy": "ddp", "zero_stage": 2}, "zero_stage applies to strategy: deepspeed"),
        ({"zero_stage": 3}, "needs strategy: deepspeed"),
        ({"strategy": "ddp", "offload_optimizer": True}, "need strategy: deepspeed or fsdp"),
        ({"offload_params": True}, "need strategy: deepspeed or fsdp"),
        ({"strategy": "deepspeed", "zero_stage": 2, "offload_params": True}, "needs zero_stage: 3"),
        ({"strategy": "deepspeed", "zero_stage": 0, "offload_optimizer": True}, "zero_stage 1, 2 or 3"),
        ({"strategy": "fsdp", "offload_optimizer": True}, "offload_params: true"),
        ({"strategy": "ddp", "fsdp_wrap": ["X"]}, "apply to strategy: fsdp"),
        ({"config_file": "x.txt"}, "DeepSpeed .json or an accelerate .yaml"),
        ({"strategy": "fsdp", "config_file": "ds.json"}, "set strategy: deepspeed"),
        ({"config_file": "ds.json", "strategy": "deepspeed", "zero_stage": 3}, "used as it is"),
    ],
)
def test_bad_combinations_are_one_sentence(section, words):
    with pytest.raises(ConfigError, match=words):
        cfg(**section)


def test_auto_follows_the_launch():
    c = cfg()
    assert resolve(c.distributed, LaunchEnv(0, 1, 0)).name == "none"
    assert resolve(c.distributed, LaunchEnv(1, 4, 1)).name == "ddp"
    with pytest.raises(ConfigError, match="each would train its own copy"):
        resolve(cfg(strategy="none").distributed, LaunchEnv(0, 2, 0))


def test_deepspeed_translation():
    z2 = deepspeed_config(cfg(strategy="deepspeed").distributed)
    assert z2["zero_optimization"]["stage"] == 2 and "offload_optimizer" not in z2["zero_optimization"]
    assert (
        z2["train_micro_batch_size_per_gpu"] == "auto" and "optimizer" not in z2
    )  # the Trainer fills "auto"
    z2o = deepspeed_config(cfg(strategy="deepspeed", offload_optimizer=True).distributed)
    assert z2o["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert z2o["optimizer"]["type"] == "AdamW"  # offloaded state is stepped by DeepSpeed's CPU Adam
    z3 = deepspeed_config(cfg(strategy="deepspeed", zero_stage=3, offload_params=True).distributed)
    zero = z3["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # the final save gathers a full model


def test_deepspeed_config_file_is_passed_as_it_is(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    c = cfg(config_file=str(path))
    s = resolve(c.distributed, LaunchEnv(0, 2, 0))
    assert (s.name, s.zero_stage, s.config_kind) == ("deepspeed", 3, "deepspeed")
    assert trainer_kwargs(c, s, device="cpu", wrap=[], checkpointing=False)["deepspeed"] == str(path)


def test_accelerate_yaml_sets_the_strategy(tmp_path):
    path = tmp_path / "acc.yaml"
    path.write_text("distributed_type: FSDP\nnum_processes: 2\n")
    s = resolve(cfg(config_file=str(path)).distributed, LaunchEnv(0, 2, 0))
    assert (s.name, s.config_kind) == ("fsdp", "accelerate")
    # accelerate launch configures the plugin from the environment: only the backend is passed
    assert trainer_kwargs(cfg(config_file=str(path)), s, device="cpu", wrap=[], checkpointing=False) == {
        "ddp_backend": "gloo"
    }


def test_fsdp_translation_reaches_accelerates_plugin(tiny_model_and_tokenizer):
    """fsdp_config as TrainingArguments turns it into accelerate's FSDP2 plugin arguments."""
    from transformers import TrainingArguments

    model, _ = tiny_model_and_tokenizer
    wrap = wrap_classes(model)
    assert wrap == ["LlamaDecoderLayer"]  # from the model's _no_split_modules
    c = cfg(strategy="fsdp", offload_params=True)
    s = resolve(c.distributed, LaunchEnv(0, 2, 0))
    kw = trainer_kwargs(c, s, device="cpu", wrap=wrap, checkpointing=True)
    assert kw["activation_checkpointing"] is False  # moved into FSDP's own checkpointing
    # Building TrainingArguments(fsdp=True) needs a process group; its fsdp step alone is run on a bare
    # instance (the same method __post_init__ calls) to see the plugin arguments accelerate will get.
    args = TrainingArguments.__new__(TrainingArguments)
    args.fsdp, args.fsdp_config, args.activation_checkpointing = kw["fsdp"], kw["fsdp_config"], False
    plugin = args._process_fsdp_args()
    assert plugin["fsdp_version"] == 2 and plugin["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
    assert plugin["cpu_offload"] is True and plugin["activation_checkpointing"] is True
    assert plugin["state_dict_type"] == "SHARDED_STATE_DICT"
    assert fsdp_config(cfg(strategy="fsdp", fsdp_wrap=["Foo"]).distributed, wrap, False)[
        "transformer_layer_cls_to_wrap"
    ] == ["Foo"]


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"strategy": "fsdp", "method": {"name": "qlora"}}, "QLoRA's 4-bit"),
        ({"strategy": "deepspeed", "method": {"name": "lora", "lora_plus_ratio": 16}}, "LoRA\\+"),
        ({"strategy": "fsdp", "task": "preference", "method": {"name": "lora"}}, "reference log-probs"),
        ({"strategy": "deepspeed", "task": "grpo", "method": {"name": "lora"}}, "generate, which needs"),
        ({"strategy": "fsdp", "task": "rloo", "method": {"name": "full"}}, "generate, which needs"),
        ({"strategy": "fsdp", "method": {"name": "prefix"}}, "virtual-token"),
    ],
)
def test_refusals_name_the_method_and_the_reason(section, words):
    c = cfg(**section)
    s = resolve(c.distributed, LaunchEnv(0, 2, 0))
    with pytest.raises(ConfigError, match=words):
        check_supported(c, s, "cpu")


def test_ddp_runs_every_method_and_task():
    for name in ("qlora", "prefix", "adapter", "bitfit", "ia3", "full", "freeze", "ptuning"):
        c = cfg(strategy="ddp", method={"name": name})
        check_supported(c, resolve(c.distributed, LaunchEnv(0, 2, 0)), "cpu")  # no refusal
    for task in ("pretrain", "classification", "preference", "grpo", "rloo"):
        c = cfg(strategy="ddp", task=task)
        check_supported(c, resolve(c.distributed, LaunchEnv(0, 2, 0)), "cpu")


def test_ddp_looks_for_unused_parameters_only_in_mixture_of_experts_models():
    """Dense models use every trainable parameter each step (False: no extra graph walk, no torch
    warning); an expert that got no token does not (True, or DDP stops at the next step)."""
    from types import SimpleNamespace

    from lmtune.distributed.strategy import unused_parameters

    dense = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=2, num_experts=None))
    assert unused_parameters(dense) is False
    for key in ("num_local_experts", "num_experts", "n_routed_experts"):
        assert unused_parameters(SimpleNamespace(config=SimpleNamespace(**{key: 8}))) is True
    c = cfg(strategy="ddp")
    s = resolve(c.distributed, LaunchEnv(0, 2, 0))
    kw = trainer_kwargs(c, s, device="cpu", wrap=[], checkpointing=False, find_unused=False)
    assert kw == {"ddp_backend": "gloo", "ddp_find_unused_parameters": False}
    f = cfg(strategy="fsdp")
    kw = trainer_kwargs(
        f, resolve(f.distributed, LaunchEnv(0, 2, 0)), device="cpu", wrap=[], checkpointing=False
    )
    assert "ddp_find_unused_parameters" not in kw


def test_fast_paths_switched_off_per_strategy():
    c = cfg()
    assert fast_path_changes(c, resolve(c.distributed, LaunchEnv(0, 1, 0))) == {}
    ddp = fast_path_changes(c, resolve(c.distributed, LaunchEnv(0, 2, 0)))
    assert set(ddp) == {"chunked loss"}
    f = cfg(strategy="fsdp")
    assert set(fast_path_changes(f, resolve(f.distributed, LaunchEnv(0, 2, 0)))) == {
        "chunked loss",
        "bf16 frozen weights",
        "torch.compile",
    }


def test_launch_command_is_the_same_train_command(tmp_path, monkeypatch):
    child = child_command(tmp_path / "c.yaml", ["train.max_steps=3"], resume=True)
    assert child == ["train", str(tmp_path / "c.yaml"), "--set", "train.max_steps=3", "--resume"]
    assert torchrun_argv(2, child)[:4] == ["--standalone", "--nproc-per-node=2", "-m", "lmtune.cli.app"]
    from lmtune.distributed.launch import launch

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="drop --nproc"):
        launch(2, tmp_path / "c.yaml", [], resume=False, accelerate_yaml=None)


def test_sharded_strategy_needs_a_launch(monkeypatch):
    from lmtune.distributed.strategy import require_launch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    c = cfg(strategy="fsdp")
    with pytest.raises(ConfigError, match="--nproc N"):
        require_launch(resolve(c.distributed, LaunchEnv(0, 1, 0)))


EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[2] / "examples" / "distributed"


@pytest.mark.parametrize(
    ("name", "strategy", "stage", "offload"),
    [
        ("ddp.yaml", "ddp", None, (False, False)),
        ("fsdp_full_shard.yaml", "fsdp", None, (False, False)),
        ("fsdp_cpu_offload.yaml", "fsdp", None, (False, True)),
        ("zero2.yaml", "deepspeed", 2, (False, False)),
        ("zero2_offload.yaml", "deepspeed", 2, (True, False)),
        ("zero3.yaml", "deepspeed", 3, (False, False)),
        ("zero3_offload.yaml", "deepspeed", 3, (True, True)),
    ],
)
def test_shipped_examples_configure_what_their_name_says(name, strategy, stage, offload):
    from lmtune.config.loader import load_config

    c = load_config(EXAMPLES / name)
    s = resolve(c.distributed, LaunchEnv(0, 2, 0))
    assert (s.name, s.zero_stage) == (strategy, stage)
    assert (c.distributed.offload_optimizer, c.distributed.offload_params) == offload


def test_slurm_example_uses_torchrun_rendezvous():
    text = (EXAMPLES / "two_nodes.slurm").read_text()
    for needed in ("srun", "torchrun", "--rdzv-backend=c10d", "--rdzv-endpoint=", "MASTER_ADDR", "--nnodes"):
        assert needed in text
