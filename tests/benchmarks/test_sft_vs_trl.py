"""benchmarks/sft_vs_trl.py: the harness end to end on a tiny job, and the measurements it shares.

The end-to-end test runs the real script (three training children and the evaluation child) on the
tiny random Llama, so it checks the plumbing and that every number in the table is real: token
counts match the harness's own tokenisation (no padding counted), every trained adapter changed the
model, losses are finite. The unit tests pin the pieces both tools are measured with.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCH / "sft_vs_trl.py"
RUNS = ("lmtune", "trl-defaults", "trl-tuned")


def load_runs_module():
    """benchmarks/sft_vs_trl_runs.py by path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("sft_vs_trl_runs", BENCH / "sft_vs_trl_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runs = load_runs_module()
CPUINFO_FLAGS = next(
    x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags")
).split()


@pytest.fixture(scope="module")
def bench(tiny_model_dir, tmp_path_factory):
    """One harness invocation on the tiny model: (completed process, result json, markdown text)."""
    work = tmp_path_factory.mktemp("bench_sft")
    out = work / "result.md"
    cmd = [sys.executable, str(SCRIPT), "--model", str(tiny_model_dir), "--records", "8"]
    cmd += [
        "--eval-records",
        "4",
        "--max-length",
        "64",
        "--threads",
        "1",
        "--work",
        str(work),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.with_suffix(".json").read_text()), out.read_text()


@pytest.mark.slow  # runs the harness end to end (~45 s): with the benchmarks, not in CI
def test_every_run_has_sane_numbers(bench):
    _, result, _ = bench
    rows = result["rows"]
    assert list(rows) == list(RUNS)
    base = result["base_eval_loss"]
    assert math.isfinite(base)
    for name, row in rows.items():
        assert "error" not in row, f"{name}: {row.get('error')} (log: {row.get('log')})"
        assert row["steady_tokens_per_second"] or row["tokens_per_second"], name
        assert (row["steady_tokens_per_second"] or row["tokens_per_second"]) > 0, name
        assert 0 < row["end_to_end_seconds"] <= row["wall_seconds"], name
        assert row["peak_rss_gib"] > 0.1, name  # a Python process with torch loaded, at least
        assert math.isfinite(row["train_loss"]), name
        assert math.isfinite(row["eval_loss"]), name
        assert row["eval_loss"] != base, f"{name}: the trained adapter left the held-out loss unchanged"
        assert 0 < row["mfu"] < 10, name
        assert row["timed_by"] == "harness", name  # one clock for every run, lmtune's included
    assert result["peak_flops"]["float32"] > 1e8 and result["peak_flops"]["bfloat16"] > 1e7
    for row in rows.values():  # MFU is taken against the peak of the precision each run trained in
        assert row["precision"] in ("bf16", "float32")
        peak = result["peak_flops"]["bfloat16" if row["precision"] == "bf16" else "float32"]
        rate = row["steady_tokens_per_second"] or row["tokens_per_second"]
        assert row["mfu"] == pytest.approx(rate * 4 * result["matmul_parameters"] / peak)  # 4N: LoRA
    assert result["matmul_parameters"] < result["parameters"]  # the tiny model's input embedding is untied


@pytest.mark.slow  # runs the harness end to end (~45 s): with the benchmarks, not in CI
def test_real_tokens_match_the_harness_tokenisation(bench):
    """No padding is counted: each run saw exactly the tokens of the truncated samples (all of them,
    or those with an answer token left, which TRL without packing and lmtune keep)."""
    _, result, _ = bench
    expected = {result["train_real_tokens"], result["train_real_tokens_with_answer"]}
    for name, row in result["rows"].items():
        assert row["real_tokens"] in expected, (name, row["real_tokens"], expected)


@pytest.mark.slow  # runs the harness end to end (~45 s): with the benchmarks, not in CI
def test_table_has_every_row_column_ratio_and_bar(bench):
    proc, result, text = bench
    for column in (
        "steady real tok/s",
        "end-to-end s",
        "peak RSS GiB",
        "final train loss",
        "eval loss",
        "MFU",
    ):
        assert column in text
    assert "TRL defaults (bf16=True, gradient_checkpointing=True, packing=False" in text
    # A TRL expert turns bf16 on only where this CPU multiplies bf16 natively (and so does lmtune's auto).
    native = any(f in CPUINFO_FLAGS for f in ("avx512_bf16", "amx_bf16"))
    tuned = f"TRL tuned (bf16={native}, gradient_checkpointing=False, packing=True bfd, padding_free=True)"
    assert tuned in text
    assert f"| lmtune (defaults, bf16={native}) |" in text
    assert f"Machine: {result['machine']['cpu']} (" in text and "avx2" in text
    assert "| TRL defaults | " in text and "| TRL tuned | " in text  # the two ratio rows
    assert set(result["ratios"]) == {"trl-defaults", "trl-tuned"}
    assert all(v is not None and v > 0 for r in result["ratios"].values() for v in r.values())
    assert len(result["bars"]) == 5
    for bar in result["bars"]:
        assert bar["result"] in ("PASS", "FAIL") and bar["measured"] > 0
        assert f"| {bar['bar']} |" in text
    assert text.strip() in proc.stdout  # the printed table is the written one
    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["trl"] and machine["peft"]
    assert result["date"]


def test_isa_avx2_emulates_a_cpu_without_bf16(tiny_model_dir, tmp_path):
    """With the instruction sets capped at AVX2, lmtune's bf16 `auto` trains in float32 (whatever the
    CPU's flags say) and the report says the machine was capped."""
    cmd = [sys.executable, str(SCRIPT), "--model", str(tiny_model_dir), "--isa", "avx2", "--only", "lmtune"]
    cmd += ["--records", "4", "--eval-records", "2", "--max-length", "64", "--threads", "1"]
    cmd += ["--work", str(tmp_path), "--out", str(tmp_path / "result.md")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["machine"]["isa"].startswith("capped at AVX2 (ATEN_CPU_CAPABILITY=avx2")
    assert result["rows"]["lmtune"]["settings"]["bf16"] is False
    assert "instruction sets capped at AVX2" in (tmp_path / "result.md").read_text()
    assert "TRL tuned trains in float32" in proc.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--only", "lmtune,axolotl"], "--only: unknown run axolotl"),
        (["--model", "/nonexistent/model"], "not a model folder"),
        (["--records", "0"], "--records must be at least 1"),
        (["--records", "5000"], "has only 2000 records"),
        (["--lmtune-set", "train.learning_rate=1e-4"], "Did you mean 'train.lr'?"),
    ],
)
def test_user_mistakes_are_one_sentence(flags, message, tmp_path):
    """Refused before any model is loaded or trained, with what to change."""
    (tmp_path / "config.json").write_text("{}")  # passes the --model check where the case is not about it
    model = [] if "--model" in flags else ["--model", str(tmp_path)]
    cmd = [sys.executable, str(SCRIPT), *flags, *model, "--work", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_conversation_from_alpaca_record():
    with_input = runs.conversation({"instruction": "Sum these.", "input": "2 and 3", "output": "5"})
    assert with_input == [
        {"role": "user", "content": "Sum these.\n\n2 and 3"},
        {"role": "assistant", "content": "5"},
    ]
    without = runs.conversation({"instruction": "Say hi.", "input": "  ", "output": "Hi!"})
    assert without[0]["content"] == "Say hi."


def test_answer_tokens_start_after_the_generation_prompt(smollm2_tokenizer):
    messages = runs.conversation({"instruction": "Name a colour.", "input": "", "output": "Blue."})
    ids, start = runs.answer_tokens(smollm2_tokenizer, messages, max_length=512)
    answer = smollm2_tokenizer.decode(ids[start:])
    assert answer.startswith("Blue.<|im_end|>")
    prompt = smollm2_tokenizer.decode(ids[:start])
    assert prompt.endswith("<|im_start|>assistant\n") and "Name a colour." in prompt
    cut, cut_start = runs.answer_tokens(smollm2_tokenizer, messages, max_length=start)
    assert len(cut) == start and cut_start == start  # prompt fills max_length: no answer token left


def test_held_out_loss_is_the_models_own_loss_on_answer_tokens(tiny_model_and_tokenizer):
    """Checked against transformers' loss with the prompt labelled -100 (an independent path)."""
    import torch

    model, tokenizer = tiny_model_and_tokenizer
    convs = [
        runs.conversation({"instruction": "Name a colour.", "input": "", "output": "Blue, like the sky."}),
        runs.conversation({"instruction": "Add.", "input": "2 + 2", "output": "4"}),
    ]
    got = runs.held_out_loss(model, tokenizer, convs, max_length=512)
    total = count = 0
    for messages in convs:
        ids, start = runs.answer_tokens(tokenizer, messages, 512)
        labels = torch.tensor([[-100] * start + ids[start:]])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=labels).loss.item()
        n = len(ids) - start
        total, count = total + loss * n, count + n
    assert got["answer_tokens"] == count and got["skipped"] == 0
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)


def test_count_real_tokens_of_trl_batches():
    """Padded and padding-free batches from TRL's own collator: padding never counts."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    examples = [{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9, 10, 11, 12]}]
    padded = DataCollatorForLanguageModeling(pad_token_id=2)(examples)
    assert padded["input_ids"].numel() == 10 and runs.count_real_tokens(padded, 2) == 8
    free = DataCollatorForLanguageModeling(pad_token_id=2, padding_free=True, pad_to_multiple_of=16)(examples)
    assert free["input_ids"].numel() == 16 and runs.count_real_tokens(free, 2) == 8
    packed = [
        {"input_ids": [5, 6, 7, 8, 9], "seq_lengths": [2, 3]},
        {"input_ids": [3, 4], "seq_lengths": [2]},
    ]
    free = DataCollatorForLanguageModeling(pad_token_id=2, padding_free=True, pad_to_multiple_of=8)(packed)
    assert runs.count_real_tokens(free, 2) == 7


def test_steady_rate_skips_warm_up_and_stalls():
    # 8 steps of 100 tokens: the first two slow (first batch), then 1 s each: steps 3-8 only.
    ends = [10.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0]
    rate = runs.steady_rate(0.0, ends, [100] * 8)
    assert rate["steady"] and rate["warmup_steps"] == 2 and rate["stalls"] == 0
    assert rate["tokens_per_second"] == pytest.approx(600 / 6)
    # 12 steps: a quarter is warm-up; step 6 took 30 s (compile switched on) and is left out.
    seconds = [5, 5, 5, 1, 1, 30, 1, 1, 1, 1, 1, 1]
    ends = [sum(seconds[: i + 1]) for i in range(12)]
    rate = runs.steady_rate(0.0, [float(t) for t in ends], [10] * 12)
    assert rate["warmup_steps"] == 3 and rate["stalls"] == 1
    assert rate["tokens_per_second"] == pytest.approx(80 / 8)
    few = runs.steady_rate(1.0, [3.0, 5.0], [50, 50])
    assert not few["steady"] and few["tokens_per_second"] == pytest.approx(100 / 4)
