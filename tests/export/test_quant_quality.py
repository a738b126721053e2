"""The measurement every quantized export writes (export/quality.py, gguf/quality.py): perplexity
checked against an independent computation (exp of the mean answer-token NLL, computed directly with
the model, and in llama.cpp against transformers), greedy agreement, and the perplexity limit with
--force."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from tests.export.test_quantize import ITEMS
from typer.testing import CliRunner

from lmtune.cli.app import app
from lmtune.errors import ConfigError
from lmtune.export import quality

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def direct_perplexity(model, tokenizer, items) -> tuple[float, int]:
    """exp(mean NLL) over the answer tokens: the tokens the full conversation has beyond the prompt
    rendered with its generation prompt, scored by a plain forward pass and log_softmax."""
    total, count = 0.0, 0
    for item in items:
        full = tokenizer.apply_chat_template(item.messages, tokenize=True, return_dict=False)
        prompt = tokenizer.apply_chat_template(
            item.messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        assert full[: len(prompt)] == prompt
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), dim=-1)
        for pos in range(len(prompt), len(full)):
            total -= float(logp[pos - 1, full[pos]])
            count += 1
    return math.exp(total / count), count


def test_perplexity_is_exp_mean_answer_nll(tiny_model_and_tokenizer, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    model.save_pretrained(tmp_path)
    got = quality.measure_hf(model, tokenizer, tmp_path, ITEMS)
    want, tokens = direct_perplexity(model, tokenizer, ITEMS)
    assert got["loss_tokens"] == tokens
    assert got["perplexity"] == pytest.approx(want, rel=1e-4)
    assert got["size_bytes"] == (tmp_path / "model.safetensors").stat().st_size
    assert len(got["greedy"]) == len(quality.QUALITY_PROMPTS) and got["tokens_per_second"] > 0


def test_agreement_counts_the_prefix_before_the_first_difference():
    got = quality.agreement([[1, 2, 3, 4], [5, 6], [7]], [[1, 2, 9, 4], [5, 6], [8]])
    assert got["greedy_prefix_agreement"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert got["greedy_identical_prompts"] == 1 and got["prompts"] == 3
    assert quality.agreement([[1, 2]], [[1, 2, 3]])["greedy_identical_prompts"] == 0  # longer is different


def report(u: float | None, q: float | None) -> dict:
    r = {"format": "int4", "unquantized": {"perplexity": u}, "quantized": {"perplexity": q}}
    r["ppl_increase"] = (q / u - 1) if u and q else None
    return r


def test_perplexity_gate_and_force():
    assert quality.perplexity_gate(report(2.0, 2.19), 0.1, force=False, what="x") is None  # +9.5%
    with pytest.raises(ConfigError, match=r"rises 15\.0% \(2\.0000 -> 2\.3000\), more than the 10\.0% limit"):
        quality.perplexity_gate(report(2.0, 2.3), 0.1, force=False, what="x")
    r = report(2.0, 2.3)
    assert (
        "rises 15.0%" in quality.perplexity_gate(r, 0.1, force=True, what="x") and r["ppl_gate"] == "forced"
    )
    r = report(None, None)
    assert quality.perplexity_gate(r, 0.0, force=False, what="x") is None and r["ppl_gate"].startswith(
        "not measured"
    )
    with pytest.raises(ConfigError, match="--max-ppl-increase -0.1"):
        quality.check_limit(-0.1)


@pytest.fixture(scope="module")
def fitted_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model fitted to ITEMS' answers, so that quantization noise raises their perplexity
    (a random model's perplexity can go either way). Deterministic: fixed weights, data and steps."""
    from tests.conftest import train_steps
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [tokenizer.apply_chat_template(it.messages, tokenize=True, return_dict=False) for it in ITEMS]
    width = max(map(len, rows))
    ids = torch.tensor([r + [2] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
    train_steps(model, {"input_ids": ids, "labels": labels}, steps=30, lr=3e-3)
    out = tmp_path_factory.mktemp("fitted")
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_int4_export_over_the_limit_fails_unless_forced(fitted_model_dir, tmp_path):
    """The CLI end to end: NF4 raises the fitted model's held-out perplexity (by a fixed amount), so a
    limit of 0 fails (folder removed) and --force keeps it, the measurement saying it was forced."""
    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps({"messages": it.messages}) + "\n" for it in ITEMS))
    runner = CliRunner()
    args = [
        "export",
        str(fitted_model_dir),
        "--format",
        "int4",
        "--data",
        str(data),
        "--max-ppl-increase",
        "0",
    ]
    failed = runner.invoke(app, [*args[:2], str(tmp_path / "a"), *args[2:]])
    assert isinstance(failed.exception, ConfigError), failed.output
    assert "more than the 0.0% limit" in str(failed.exception) and "--force" in str(failed.exception)
    assert not (tmp_path / "a").exists()
    kept = runner.invoke(app, [*args[:2], str(tmp_path / "b"), *args[2:], "--force"])
    assert kept.exit_code == 0, kept.output
    assert "Kept because of --force" in kept.output
    saved = json.loads((tmp_path / "b" / "quantization.json").read_text())
    assert saved["ppl_gate"] == "forced" and saved["ppl_increase"] > 0
    assert saved["quantized"]["perplexity"] == pytest.approx(
        saved["unquantized"]["perplexity"] * (1 + saved["ppl_increase"])
    )


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_gguf_perplexity_in_llama_cpp_matches_transformers(fitted_model_dir, tmp_path):
    """q8_0 measured in llama.cpp against an f16 file: the f16 side's perplexity (llama.cpp logits)
    equals the direct computation in transformers on the same records. The weights are rounded to
    f16 first, so the file holds exactly the model's weights and only compute precision differs
    (compared as losses, i.e. log perplexities, in nats)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmtune.export.gguf import export_gguf
    from lmtune.export.gguf.quality import measure_gguf

    model = AutoModelForCausalLM.from_pretrained(fitted_model_dir).half().float().eval()
    tokenizer = AutoTokenizer.from_pretrained(fitted_model_dir)
    path = export_gguf(model, tokenizer, tmp_path / "m.q8_0.gguf", quant="q8_0", notes=[])
    got = measure_gguf(path, model, tokenizer, quant="q8_0", items=ITEMS)
    want, tokens = direct_perplexity(model, tokenizer, ITEMS)
    u, q = got["unquantized"], got["quantized"]
    assert u["loss_tokens"] == q["loss_tokens"] == tokens
    assert abs(math.log(u["perplexity"]) - math.log(want)) < 0.01, (u["perplexity"], want)
    assert abs(math.log(q["perplexity"]) - math.log(want)) < 0.1, (q["perplexity"], want)  # q8_0: close
    assert q["size_bytes"] == path.stat().st_size < u["size_bytes"]
    assert got["ppl_increase"] == pytest.approx(q["perplexity"] / u["perplexity"] - 1)
    assert 0 <= got["greedy_prefix_agreement"] <= 1 and got["prompts"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.q8_0.gguf"]  # the f16 reference is gone


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_gguf_export_cli_measures_and_applies_the_limit(fitted_model_dir, tmp_path):
    """`--format gguf --quant q4_0`: measured in llama.cpp against f16 on --data, the limit applied
    (0 with --force: kept, and the gate's verdict agrees with the measured rise)."""
    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps({"messages": it.messages}) + "\n" for it in ITEMS))
    out = tmp_path / "m.q4_0.gguf"
    args = ["export", str(fitted_model_dir), str(out), "--quant", "q4_0", "--data", str(data)]
    result = CliRunner().invoke(app, [*args, "--max-ppl-increase", "0", "--force"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".quant.json").read_text())
    u, q = report["unquantized"], report["quantized"]
    assert u["loss_records"] == q["loss_records"] == len(ITEMS) and q["size_bytes"] == out.stat().st_size
    assert report["ppl_gate"] == ("forced" if report["ppl_increase"] > 0 else "passed")
    assert ("Kept because of --force" in result.output) == (report["ppl_gate"] == "forced")
    assert "q4_0 (vs f16, llama.cpp):" in result.output
