"""`lmtune merge`: the merged folder loads as a plain model and answers like the run it came from
(checked against the run loaded unmerged), for every mergeable method; QLoRA merges into the
original weights (checked against W + B·A·scale computed by hand from the saved adapter)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tests.classification_helpers import cls_config, save_tiny_bert, sentiment_rows, write_jsonl
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from lmtune.config.loader import validate_config
from lmtune.errors import ConfigError
from lmtune.export import merge as merge_module
from lmtune.export.merge import merge_run
from lmtune.run.load import load_target
from lmtune.train.runner import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPT = [{"role": "user", "content": "What is 2 plus 3?"}]


def run_config(model_dir, data, out, method: dict, **train_opts):
    return validate_config(
        {
            "model": {"name": str(model_dir)},
            "data": {"path": str(data), "max_length": 64},
            "method": method,
            "train": {"max_steps": 6, "lr": 2e-2, "batch_size": 4, "bf16": False, **train_opts},
            "output": {"dir": str(out)},
        }
    )


def logits_of(model, tokenizer):
    ids = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    model.eval()
    with torch.no_grad():
        return model(**ids).logits.float()


METHODS = {
    "lora": ("tiny_model_dir", {"name": "lora", "r": 4, "alpha": 8}),
    "dora": ("tiny_model_dir", {"name": "lora", "r": 4, "use_dora": True}),
    "ia3": ("tiny_model_dir", {"name": "ia3"}),
    "bitfit": ("tiny_qwen2_dir", {"name": "bitfit"}),
    "full": ("tiny_model_dir", {"name": "full"}),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_merged_folder_answers_like_the_run(method, request, sums_file, tmp_path):
    model_fixture, opts = METHODS[method]
    run = train(run_config(request.getfixturevalue(model_fixture), sums_file, tmp_path / "run", opts)).run_dir
    result = merge_run(run, tmp_path / "merged", say=lambda *_: None)
    assert result.parity["passed"] and result.parity["greedy_identical"] is True
    assert result.dtype == "float32"  # the tiny bases are saved in float32

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n or "ia3" in n for n, _ in merged.named_parameters())  # a plain model
    unmerged = load_target(str(run), quiet=True)
    assert tokenizer.chat_template == unmerged.tokenizer.chat_template
    torch.testing.assert_close(
        logits_of(merged, tokenizer), logits_of(unmerged.model, unmerged.tokenizer), atol=1e-4, rtol=1e-4
    )
    card = (tmp_path / "merged" / "README.md").read_text()
    assert f"method {opts['name']}" in card and "max_steps: 6" in card
    assert json.loads((tmp_path / "merged" / "parity.json").read_text())["passed"] is True


def test_qlora_merges_into_the_original_weights(tiny_model_dir, sums_file, tmp_path):
    method = {"name": "qlora", "r": 4, "alpha": 8, "target_modules": ["q_proj"]}
    run = train(run_config(tiny_model_dir, sums_file, tmp_path / "run", method)).run_dir
    merge_run(run, tmp_path / "merged", say=lambda *_: None)
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    base = load_file(tiny_model_dir / "model.safetensors")
    adapter = load_file(run / "adapter_model.safetensors")
    key = "model.layers.0.self_attn.q_proj"
    a = adapter[f"base_model.model.{key}.lora_A.weight"]
    b = adapter[f"base_model.model.{key}.lora_B.weight"]
    assert b.abs().max() > 0  # training moved the adapter, so the check below is not trivial
    expected = base[f"{key}.weight"] + (b @ a) * (8 / 4)
    torch.testing.assert_close(merged[f"{key}.weight"], expected, atol=1e-6, rtol=1e-5)
    # An untargeted weight is the original float32 base, bit for bit (not a dequantized 4-bit copy).
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])


def test_classification_head_is_merged(tmp_path):
    rows = sentiment_rows(24, seed=1)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = cls_config(
        save_tiny_bert(tmp_path / "bert"), data, None, tmp_path / "run", {"name": "lora", "r": 4}
    )
    run = train(cfg).run_dir
    result = merge_run(run, tmp_path / "merged", say=lambda *_: None)
    assert result.parity["greedy_identical"] is None and result.parity["passed"]
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert set(merged.config.id2label.values()) == {"neg", "pos"}
    unmerged = load_target(str(run), quiet=True)
    enc = unmerged.tokenizer(["good happy film", "bad boring plot"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(merged(**enc).logits, unmerged.model(**enc).logits, atol=1e-5, rtol=1e-4)


def test_bfloat16_output_and_a_failing_parity(tiny_model_dir, sums_file, tmp_path, monkeypatch):
    run = train(run_config(tiny_model_dir, sums_file, tmp_path / "run", METHODS["lora"][1])).run_dir
    result = merge_run(run, tmp_path / "bf16", dtype="bfloat16", say=lambda *_: None)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16
    assert result.parity["reloaded_max_abs_diff"] == 0  # what was checked is what was saved
    assert 0 < result.parity["mean_abs_diff"] <= merge_module.MEAN_DIFF_LIMIT["bfloat16"]

    monkeypatch.setitem(merge_module.MEAN_DIFF_LIMIT, "bfloat16", 1e-9)
    with pytest.raises(ConfigError, match="parity failed"):
        merge_run(run, tmp_path / "refused", dtype="bfloat16", say=lambda *_: None)
    assert not (tmp_path / "refused").exists()
    forced = merge_run(run, tmp_path / "forced", dtype="bfloat16", force=True, say=lambda *_: None)
    assert not forced.parity["passed"] and (tmp_path / "forced" / "model.safetensors").is_file()


def test_refusals(tiny_model_dir, sums_file, tmp_path):
    prompt_run = train(
        run_config(tiny_model_dir, sums_file, tmp_path / "p", {"name": "prompt"}, max_steps=1)
    ).run_dir
    with pytest.raises(ConfigError, match="cannot be merged"):
        merge_run(prompt_run, tmp_path / "out")
    with pytest.raises(ConfigError, match="not a run directory"):
        merge_run(tiny_model_dir, tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        merge_run(prompt_run, tmp_path / "full")


def test_a_continued_run_merges_onto_the_original_base(tiny_model_dir, sums_file, tmp_path):
    """Run B continues run A (model.name: A): B's adapter holds A's training plus B's, on A's base."""
    first = train(run_config(tiny_model_dir, sums_file, tmp_path / "a", METHODS["lora"][1])).run_dir
    second = train(run_config(first, sums_file, tmp_path / "b", METHODS["lora"][1])).run_dir
    merge_run(second, tmp_path / "merged", say=lambda *_: None)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    unmerged = load_target(str(second), quiet=True)
    assert unmerged.run["base_model"] == str(tiny_model_dir)
    torch.testing.assert_close(
        logits_of(merged, unmerged.tokenizer),
        logits_of(unmerged.model, unmerged.tokenizer),
        atol=1e-4,
        rtol=1e-4,
    )
    first_only = load_target(str(first), quiet=True)
    assert not torch.allclose(
        logits_of(merged, unmerged.tokenizer), logits_of(first_only.model, first_only.tokenizer)
    )
