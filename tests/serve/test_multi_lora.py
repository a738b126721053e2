"""Several LoRA runs of one base: loaded onto one copy of the base, routed per request by `model`,
sharing batches (PEFT's adapter_names per row), each reply equal to that run served alone. And the
exact vLLM command line for the same targets."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from lmtune.config.loader import validate_config
from lmtune.errors import ConfigError
from lmtune.infer.generate import GenerationOptions, generate_replies
from lmtune.run.load import load_target
from lmtune.serve.app import create_app
from lmtune.serve.engine import Outcome
from lmtune.serve.engine.vllm import plan_vllm, run_vllm
from lmtune.serve.server import load_slots
from lmtune.train.runner import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTIONS = [[{"role": "user", "content": "What is 3 plus 5?"}], [{"role": "user", "content": "hello"}]]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, sums_file, tmp_path_factory) -> list[Path]:
    """A LoRA run trained here, and a second one on the same base: a copy with other adapter weights."""
    import torch
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("multi_lora")
    cfg = validate_config(
        {
            "model": {"name": str(tiny_model_dir)},
            "data": {"path": str(sums_file), "val_size": 0},
            "method": {"name": "lora", "r": 8},
            "train": {"max_steps": 6, "lr": 1e-2, "batch_size": 4, "log_steps": 10, "bf16": False},
            "output": {"dir": str(root / "run-a")},
        }
    )
    first = train(cfg, console=Console(quiet=True)).run_dir
    second = root / "run-b"
    shutil.copytree(first, second)
    weights = second / "adapter_model.safetensors"
    state = load_file(str(weights))
    generator = torch.Generator().manual_seed(1)
    state = {k: v + 0.5 * torch.randn(v.shape, generator=generator) for k, v in state.items()}
    save_file(state, str(weights))
    return [Path(first), second]


def test_runs_share_the_base_and_batches_and_answer_as_alone(runs):
    slots = load_slots([str(r) for r in runs], max_batch=8)
    a, b = slots
    assert (
        a.model is b.model
        and a.scheduler is b.scheduler
        and (a.adapter, b.adapter) == ("default", "adapter1")
    )
    assert "MiB" in b.note and "base loaded once" in a.note
    options = GenerationOptions(max_new_tokens=16)
    expected = {}
    for run, slot in zip(runs, slots, strict=True):
        alone = load_target(str(run), quiet=True)
        expected[slot.id] = generate_replies(alone.model, alone.tokenizer, QUESTIONS, options)
    jobs = [(slot, i) for slot in slots for i in range(len(QUESTIONS))]
    replies = {
        job: slot.generate(slot.chat_prompt(QUESTIONS[job[1]]), options, strip=True, outcome=Outcome())
        for job in jobs
        for slot in [job[0]]
    }  # all queued before the first is read: they share steps
    got = {(s.id, i): "".join(r) for (s, i), r in replies.items()}
    for slot in slots:
        assert [got[(slot.id, i)] for i in range(len(QUESTIONS))] == expected[slot.id]
    assert expected[a.id] != expected[b.id] and all(expected[a.id] + expected[b.id])
    assert a.scheduler.widest >= 3  # both adapters' rows ran in the same steps
    client = TestClient(create_app(slots))  # the request's model field picks the adapter
    for slot in slots:
        body = {"model": slot.id, "messages": QUESTIONS[0], "max_tokens": 16}
        reply = client.post("/v1/chat/completions", json=body).json()
        assert reply["choices"][0]["message"]["content"] == expected[slot.id][0]


def test_bfloat16_serving_casts_base_and_adapters_and_reports_their_served_size(runs):
    import torch

    from lmtune.serve.engine.adapters import adapter_bytes

    full = load_slots([str(r) for r in runs], max_batch=8)
    half = load_slots([str(r) for r in runs], max_batch=8, dtype="bfloat16")
    assert {p.dtype for p in half[0].model.parameters()} == {torch.bfloat16}
    for f, h in zip(full, half, strict=True):  # the note says what the adapter takes as served: half
        name = h.adapter
        assert adapter_bytes(h.model, name) * 2 == adapter_bytes(f.model, name)
        assert f"{adapter_bytes(h.model, name) / 2**20:.2f} MiB" in h.note
    options = GenerationOptions(max_new_tokens=12)
    for run, slot in zip(runs, half, strict=True):  # each adapter answers as its own bf16 model alone
        alone = load_target(str(run), quiet=True)
        alone.model.to(torch.bfloat16)
        want = generate_replies(alone.model, alone.tokenizer, QUESTIONS[:1], options)
        got = "".join(slot.generate(slot.chat_prompt(QUESTIONS[0]), options, strip=True, outcome=Outcome()))
        assert [got] == want


def test_vllm_command_line(runs, tiny_model_dir, tmp_path):
    a, b = (str(r) for r in runs)
    plan = plan_vllm([a, b], ["sums", "other"], host="127.0.0.1", port=9000, api_key="k", max_batch=32)
    assert plan.argv == [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(tiny_model_dir), "--served-model-name", Path(tiny_model_dir).name,
        "--host", "127.0.0.1", "--port", "9000",
        "--enable-lora", "--lora-modules", f"sums={a}", f"other={b}",
        "--max-lora-rank", "8", "--max-loras", "2",
        "--chat-template", str(Path(a) / "chat_template.jinja"),
        "--max-num-seqs", "32",
    ]  # fmt: skip
    assert plan.env == {"VLLM_API_KEY": "k"} and plan.merges == [] and "k" not in plan.argv
    folder = plan_vllm([str(tiny_model_dir)], port=8000)
    assert folder.argv[3:] == [
        "--model", str(tiny_model_dir), "--served-model-name", Path(tiny_model_dir).name,
        "--host", "127.0.0.1", "--port", "8000",
    ]  # fmt: skip
    dora = tmp_path / "dora"
    shutil.copytree(a, dora)
    config = dora / "adapter_config.json"
    config.write_text(config.read_text().replace('"use_dora": false', '"use_dora": true'))
    merged = plan_vllm([str(dora)], merged_dir=str(tmp_path / "m"))  # DoRA: merged first
    assert merged.merges == [(str(dora), str(tmp_path / "m"))] and merged.argv[4] == str(tmp_path / "m")
    with pytest.raises(ConfigError, match="one model per process"):
        plan_vllm([a, str(tiny_model_dir)])
    if "vllm" not in sys.modules:
        with pytest.raises(ConfigError, match="needs vLLM, which is not installed"):
            run_vllm(plan)


def test_adapters_mixed_in_one_batched_prefill(runs):
    """Requests for both adapters (and prompts of different lengths) arrive together while a row is
    generating: one prefill forward routes each row through its own LoRA, and every reply equals that
    run served alone."""
    slots = load_slots([str(r) for r in runs], max_batch=8)
    scheduler = slots[0].scheduler
    options = GenerationOptions(max_new_tokens=12)
    expected = {}
    for run, slot in zip(runs, slots, strict=True):
        alone = load_target(str(run), quiet=True)
        expected[slot.id] = generate_replies(alone.model, alone.tokenizer, QUESTIONS, options)
    running = slots[1].generate(
        slots[1].chat_prompt(QUESTIONS[0]),
        GenerationOptions(max_new_tokens=30),
        strip=True,
        outcome=Outcome(),
    )
    next(iter(running))
    prefills = scheduler.prefills
    with scheduler._wake:  # all four wait together
        replies = {
            (slot.id, i): slot.generate(slot.chat_prompt(q), options, strip=True, outcome=Outcome())
            for i, q in enumerate(QUESTIONS)
            for slot in slots
        }
    got = {key: "".join(reply) for key, reply in replies.items()}
    running.close()
    assert scheduler.prefills - prefills == 1
    for slot in slots:
        assert [got[(slot.id, i)] for i in range(len(QUESTIONS))] == expected[slot.id]
    assert expected[slots[0].id] != expected[slots[1].id]


def test_vllm_in_another_environment(runs, tmp_path):
    """--vllm-python: vLLM is looked for, and started, in that interpreter (a stand-in here that
    records its argv and environment), not in lmtune's."""
    record = tmp_path / "argv.json"
    for has_vllm in (False, True):
        python = tmp_path / f"python-{has_vllm}"
        python.write_text(
            f"#!{sys.executable}\n"
            "import json, os, sys\n"
            "if sys.argv[1] == '-c':\n"
            f"    sys.exit({0 if has_vllm else 1})\n"
            f"open({str(record)!r}, 'w').write(json.dumps([sys.argv[1:], os.environ.get('VLLM_API_KEY')]))\n"
        )
        python.chmod(0o755)
        plan = plan_vllm([str(r) for r in runs], ["a", "b"], api_key="k", python=str(python))
        if not has_vllm:
            with pytest.raises(ConfigError, match=f"not installed in {python}"):
                run_vllm(plan, echo=lambda _: None)
            continue
        assert run_vllm(plan, echo=lambda _: None) == 0
        argv, key = json.loads(record.read_text())
        assert argv == plan.argv[1:] and argv[:2] == ["-m", "vllm.entrypoints.openai.api_server"]
        assert key == "k"


def test_vllm_names_an_alias_base_by_the_alias(runs, tmp_path, monkeypatch):
    """A run on `smollm2-135m-instruct` hands vLLM the alias's imported folder, served under the alias."""
    import lmtune.serve.engine.vllm as vllm_module

    run = tmp_path / "on-alias"
    shutil.copytree(runs[0], run)
    marker = run / "lmtune_run.json"
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps({**info, "base_model": "smollm2-135m-instruct"}))
    monkeypatch.setattr(vllm_module, "_model_path", lambda spec: f"/cache/models/{spec}-8c1637beeacb")
    plan = plan_vllm([str(run)])
    assert plan.argv[3:7] == [
        "--model", "/cache/models/smollm2-135m-instruct-8c1637beeacb",
        "--served-model-name", "smollm2-135m-instruct",
    ]  # fmt: skip
