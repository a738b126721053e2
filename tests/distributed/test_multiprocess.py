"""Real 2-process runs on CPU (gloo), checked against a 1-process run with the same global batch.

Why the results must agree: the 1-process run takes 4 samples per step; the 2-process runs take 2
per process, the two halves of the same 4 (data in file order, accelerate's sampler hands
process r every other micro-batch). The loss is divided by the trained tokens of the whole global
batch (counted across processes), DDP/FSDP average the gradients, so every step applies the same
update. What differs is only the float32 summation order (per-process partial sums, all-reduce),
~1e-7 relative per step; after 4 AdamW steps that stays below 1e-5 relative on the logged losses
and 1e-4 absolute on adapter weights of size ~0.1 (measured: 1.1e-5). LoRA dropout is 0: each
process would draw its own masks.
"""

from __future__ import annotations

import json

import pytest
import torch

from lmtune.config.loader import validate_config
from lmtune.train.runner import train

from .helpers import adapter, lmtune_train, losses, write_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reference(tiny_model_dir, sums_file, tmp_path_factory):
    """One process, 4 samples per step, 4 steps."""
    out = tmp_path_factory.mktemp("ref") / "run"
    cfg_file = write_config(tmp_path_factory.mktemp("cfg") / "ref.yaml", tiny_model_dir, sums_file, out)
    import yaml

    train(validate_config(yaml.safe_load(cfg_file.read_text())))
    return out


@pytest.fixture(scope="module")
def ddp_run(tiny_model_dir, sums_file, tmp_path_factory):
    """Two processes x 2 samples, with every non-zero rank's writes under the run directory recorded."""
    base = tmp_path_factory.mktemp("ddp")
    out, audit = base / "run", base / "audit"
    audit.mkdir()
    cfg = write_config(
        base / "ddp.yaml", tiny_model_dir, sums_file, out, train={"batch_size": 2, "save_steps": 2}
    )
    done = lmtune_train(cfg, "--nproc", "2", audit_dir=audit, root=out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, audit, done.stdout


def close(a: dict, b: dict, atol: float) -> float:
    assert sorted(a) == sorted(b)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, worst
    return worst


def test_ddp_matches_one_process(reference, ddp_run):
    out, _, stdout = ddp_run
    assert "ddp over 2 process(es)" in stdout and "global batch 4" in stdout
    assert losses(out) == pytest.approx(losses(reference), rel=1e-5)
    assert len(losses(out)) == 4
    ref = adapter(reference)
    close(adapter(out), ref, atol=1e-4)
    # training moved the adapter well beyond that tolerance (so the comparison can fail)
    assert max(v.abs().max().item() for k, v in ref.items() if "lora_B" in k) > 1e-2


def test_only_rank0_writes_the_run_directory(ddp_run):
    out, audit, stdout = ddp_run
    written = (audit / "rank1.txt").read_text().split()
    # Outside checkpoints/ rank 1 writes nothing. Inside, the Trainer has every rank create the
    # checkpoint folder and save its own RNG state (rng_state_1.pth): the recorder sees the folder
    # (Python audit hooks miss writes made from C++, such as torch.save's zip writer and safetensors,
    # so the folder is the evidence that rank 1's writes are recorded at all).
    # (checkpoints are written under checkpoints/.incomplete/ and renamed into place once complete)
    assert "checkpoints/.incomplete/checkpoint-2" in written, written
    assert all(w.startswith("checkpoints") for w in written), written
    assert (out / "checkpoints" / "checkpoint-2" / "rng_state_1.pth").is_file()
    assert stdout.count("Run directory:") == 2  # the header and the final line, printed once (rank 0)
    assert (out / "adapter_model.safetensors").is_file() and (out / "summary.json").is_file()


def test_fsdp_resume_of_sharded_checkpoint_matches_one_process(
    reference, tiny_model_dir, sums_file, tmp_path
):
    """FSDP2, 2 processes: 2 steps with a sharded checkpoint, then --resume to step 4."""
    out = tmp_path / "run"
    cfg = write_config(
        tmp_path / "fsdp.yaml",
        tiny_model_dir,
        sums_file,
        out,
        train={"batch_size": 2, "save_steps": 2, "max_steps": 2},
        distributed={"strategy": "fsdp"},
    )
    first = lmtune_train(cfg, "--nproc", "2")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "FSDP shards per LlamaDecoderLayer" in first.stdout
    shards = list((out / "checkpoints" / "checkpoint-2").glob("pytorch_model_fsdp_0/*.distcp"))
    assert len(shards) == 2  # one shard file per rank: the checkpoint is sharded, not gathered
    second = lmtune_train(cfg, "--nproc", "2", "--resume", "--set", "train.max_steps=4")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert losses(out) == pytest.approx(losses(reference), rel=1e-5)
    # the final adapter was gathered into the plain PEFT layout and loads without any process group
    close(adapter(out), adapter(reference), atol=1e-4)
    assert all(t.dtype == torch.float32 for t in adapter(out).values())
    # ... and the run directory is an ordinary one for every later verb (they all go through load_target)
    from lmtune.run.load import load_target

    ids = torch.tensor([[1, 30, 200, 4000, 17]])
    with torch.no_grad():
        got, want = (load_target(str(r), quiet=True).model(input_ids=ids).logits for r in (out, reference))
    assert torch.allclose(got, want, atol=1e-3), (got - want).abs().max()


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_matches_one_process(reference, tiny_model_dir, sums_file, tmp_path, stage):
    """DeepSpeed ZeRO on CPU processes (DeepSpeed's CPU accelerator). Slow and optional: deepspeed is
    an extra (lmtune[deepspeed]), and its first run JIT-compiles the shared-memory communication op
    (~6 minutes on a 2-core machine, cached in ~/.cache/torch_extensions afterwards)."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "run"
    cfg = write_config(
        tmp_path / "zero.yaml",
        tiny_model_dir,
        sums_file,
        out,
        train={"batch_size": 2},
        distributed={"strategy": "deepspeed", "zero_stage": stage},
    )
    done = lmtune_train(cfg, "--nproc", "2", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"ZeRO stage {stage}" in done.stdout
    assert losses(out) == pytest.approx(losses(reference), rel=1e-5)
    close(adapter(out), adapter(reference), atol=1e-4)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ACCELERATE_TYPES = {
    # what `accelerate config` writes for one machine with 2 GPUs, plain DDP
    "ddp": "distributed_type: MULTI_GPU\ngpu_ids: all\n",
    # ... and FSDP2 full shard per decoder layer
    "fsdp": "distributed_type: FSDP\n"
    "fsdp_config:\n"
    "  fsdp_version: 2\n"
    "  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n"
    "  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer\n"
    "  fsdp_reshard_after_forward: true\n"
    "  fsdp_state_dict_type: SHARDED_STATE_DICT\n"
    "  fsdp_offload_params: false\n"
    "  fsdp_cpu_ram_efficient_loading: false\n",
}


# the FSDP file runs in CI (it also shows the model really sharded); the DDP file takes the same
# launch path and is slow-marked to keep CI short
@pytest.mark.parametrize("kind", [pytest.param("ddp", marks=pytest.mark.slow), "fsdp"])
def test_existing_accelerate_yaml_is_used_as_it_is(reference, tiny_model_dir, sums_file, tmp_path, kind):
    """distributed.config_file names an accelerate YAML written for one machine with 2 GPUs;
    `lmtune train --nproc 2` starts the processes through `accelerate launch --config_file` with it
    (here they are CPU processes on gloo) and the run equals the 1-process reference."""
    accelerate_yaml = tmp_path / "two_gpus.yaml"
    accelerate_yaml.write_text(
        "compute_environment: LOCAL_MACHINE\n" + ACCELERATE_TYPES[kind] + "machine_rank: 0\n"
        "main_training_function: main\n"
        "mixed_precision: 'no'\n"
        "num_machines: 1\n"
        "num_processes: 2\n"
        "rdzv_backend: static\n"
        "same_network: true\n"
        f"main_process_port: {free_port()}\n"
        "use_cpu: false\n",
        encoding="utf-8",
    )
    out = tmp_path / "run"
    cfg = write_config(
        tmp_path / "acc.yaml",
        tiny_model_dir,
        sums_file,
        out,
        train={"batch_size": 2, "save_steps": 4},
        distributed={"config_file": str(accelerate_yaml)},
    )
    done = lmtune_train(cfg, "--nproc", "2")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert f"{kind} over 2 process(es)" in log and "find_unused_parameters=True" not in log
    # FSDP really sharded the model (one shard file per rank), DDP saved a whole adapter
    shards = list((out / "checkpoints" / "checkpoint-4").glob("pytorch_model_fsdp_0/*.distcp"))
    assert len(shards) == (2 if kind == "fsdp" else 0)
    assert losses(out) == pytest.approx(losses(reference), rel=1e-5)
    close(adapter(out), adapter(reference), atol=1e-4)


@pytest.mark.slow
def test_zero3_resume_from_its_own_json_matches_one_process(reference, tiny_model_dir, sums_file, tmp_path):
    """ZeRO-3 from an existing DeepSpeed JSON file (distributed.config_file, used as it is): 2 steps
    with a sharded checkpoint (each rank its own partition), then --resume to step 4, equal to the
    1-process reference. Slow and optional (deepspeed is an extra; see the ZeRO test above)."""
    pytest.importorskip("deepspeed")
    ds_json = tmp_path / "zero3.json"
    ds_json.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": "auto",
                "train_batch_size": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
                "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
            }
        ),
        encoding="utf-8",
    )
    out = tmp_path / "run"
    cfg = write_config(
        tmp_path / "zero3.yaml",
        tiny_model_dir,
        sums_file,
        out,
        train={"batch_size": 2, "save_steps": 2, "max_steps": 2},
        distributed={"config_file": str(ds_json)},
    )
    first = lmtune_train(cfg, "--nproc", "2", timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "ZeRO stage 3" in first.stdout
    ckpt = out / "checkpoints" / "checkpoint-2"
    parts = sorted(p.name for p in ckpt.glob("global_step2/*optim_states.pt"))
    assert len(parts) == 2, sorted(p.name for p in ckpt.rglob("*"))  # one optimizer partition per rank
    second = lmtune_train(cfg, "--nproc", "2", "--resume", "--set", "train.max_steps=4", timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert losses(out) == pytest.approx(losses(reference), rel=1e-5)
    close(adapter(out), adapter(reference), atol=1e-4)
