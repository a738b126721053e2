"""`lmtune export --format onnx`: onnxruntime answers like torch float32 (logits, padded batches, greedy
ids, one cached decoding step), and the folder carries what a user needs to run it."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmtune.errors import ConfigError
from lmtune.export.onnx import export_onnx, onnx_greedy, open_session, verify_onnx
from lmtune.infer.generate import _eos_ids

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
TOL = 1e-4  # float32 on both sides: only the order of additions differs
QUESTIONS = ("Name three colours.", "How many legs does a spider have?")


def render(tokenizer, question: str) -> str:
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def run_graph(session, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: dict | None = None):
    """One call of the graph with explicit feeds (empty past unless given): [logits, present...]."""
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values."):
            shape = (len(ids), i.shape[1], 0, i.shape[3])
            feed[i.name] = past[i.name] if past else np.zeros(shape, np.float32)
    return session.run(None, feed)


@pytest.fixture(scope="module", params=["tiny_model_dir", "tiny_qwen2_dir"])
def exported(request, one_torch_thread, tmp_path_factory):
    folder = request.getfixturevalue(request.param)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out = tmp_path_factory.mktemp("onnx") / "out"
    report = export_onnx(model, tokenizer, out, threads=1, say=lambda *_: None)
    session = open_session(out / "model.onnx", threads=1)
    return SimpleNamespace(model=model, tokenizer=tokenizer, out=out, report=report, session=session)


def test_report_and_folder(exported):
    r, out = exported.report, exported.out
    assert r["passed"] and r["kv_cache"] and r["greedy_identical"] and r["greedy_tokens"] > 0
    assert r["max_abs_diff"] < TOL and r["opset"] >= 18
    assert json.loads((out / "onnx_verify.json").read_text()) == r
    assert (out / "config.json").is_file() and (out / "generation_config.json").is_file()
    reloaded = AutoTokenizer.from_pretrained(out)
    assert reloaded.chat_template and reloaded.chat_template == exported.tokenizer.chat_template
    text = render(reloaded, "Hi")
    assert reloaded(text)["input_ids"] == exported.tokenizer(text)["input_ids"]
    names = [i.name for i in exported.session.get_inputs()]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    layers = exported.model.config.num_hidden_layers
    assert names[3:] == [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def test_left_padded_batch_matches_torch(exported):
    tok, model = exported.tokenizer, exported.model
    rows = [tok(render(tok, q), add_special_tokens=False)["input_ids"] for q in QUESTIONS]
    width = max(map(len, rows))
    ids = np.array([[tok.pad_token_id] * (width - len(r)) + r for r in rows], np.int64)
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], np.int64)
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    logits = run_graph(exported.session, ids, mask, positions)[0]
    with torch.inference_mode():
        for row, r in zip(range(2), rows):  # each prompt alone in torch: no padding at all
            alone = model(input_ids=torch.tensor([r])).logits[0].numpy()
            assert np.abs(logits[row, width - len(r) :] - alone).max() < TOL
    assert (mask == 0).any()  # the batch really was padded


def test_one_cached_step_equals_full_sequence(exported):
    tok, model, session = exported.tokenizer, exported.model, exported.session
    ids = tok(render(tok, QUESTIONS[0]), add_special_tokens=False)["input_ids"]
    n = len(ids)
    first = run_graph(session, np.array([ids[:-1]]), np.ones((1, n - 1), np.int64), np.arange(n - 1)[None])
    names = [o.name.replace("present.", "past_key_values.") for o in session.get_outputs()][1:]
    past = dict(zip(names, first[1:]))
    assert past["past_key_values.0.key"].shape[2] == n - 1
    step = run_graph(session, np.array([ids[-1:]]), np.ones((1, n), np.int64), np.array([[n - 1]]), past)
    with torch.inference_mode():
        full = model(input_ids=torch.tensor([ids])).logits[0, -1].numpy()
    assert np.abs(step[0][0, -1] - full).max() < TOL
    assert step[1].shape[2] == n  # the present cache grew by the one token


def test_greedy_ids_match_torch(exported):
    tok, model = exported.tokenizer, exported.model
    eos = _eos_ids(model, tok)
    for question in QUESTIONS:
        text = render(tok, question)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                eos_token_id=eos, pad_token_id=tok.pad_token_id,
            )  # fmt: skip
        expected = out[0, ids.shape[1] :].tolist()
        assert len(expected) > 3  # a real answer, not an immediate end of turn
        assert onnx_greedy(exported.session, tok, text, 12, eos_ids=eos) == expected


def test_verification_fails_for_another_model(exported, tiny_qwen2_dir, tiny_model_dir):
    """The check can fail: the graph verified against a different model is reported, not passed."""
    other_dir = tiny_model_dir if exported.model.config.model_type == "qwen2" else tiny_qwen2_dir
    other = AutoModelForCausalLM.from_pretrained(other_dir).eval()
    report = verify_onnx(exported.out / "model.onnx", other, exported.tokenizer, max_new_tokens=4, threads=1)
    assert not report["passed"] and report["max_abs_diff"] > 0.1


def test_graph_without_cache(tiny_model_dir, tmp_path, one_torch_thread):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    report = export_onnx(model, tokenizer, tmp_path / "plain", kv_cache=False, threads=1, say=lambda *_: None)
    assert report["passed"] and not report["kv_cache"] and report["greedy_identical"]
    session = open_session(tmp_path / "plain" / "model.onnx", threads=1)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "position_ids"]
    assert [o.name for o in session.get_outputs()] == ["logits"]


def test_missing_onnxruntime_is_one_sentence(tiny_model_and_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    model, tokenizer = tiny_model_and_tokenizer
    with pytest.raises(ConfigError, match=r"needs onnxruntime.*pip install 'lmtune\[onnx\]'"):
        export_onnx(model, tokenizer, tmp_path / "out", say=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_a_model_that_does_not_generate_is_refused(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    with pytest.raises(ConfigError, match="causal language models"):
        export_onnx(BertForSequenceClassification(config), None, tmp_path / "out", say=lambda *_: None)
