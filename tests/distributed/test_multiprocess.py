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
