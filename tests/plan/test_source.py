"""Model shapes read without weights or torch: a GGUF header parsed with struct against gguf's own
reader, and a folder's config.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmtune.errors import ModelError
from lmtune.plan.source import folder_config, gguf_config, gguf_metadata


def write_gguf(path, *, tied: bool) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(3)
    w.add_embedding_length(96)
    w.add_feed_forward_length(256)
    w.add_head_count(6)
    w.add_head_count_kv(2)
    w.add_context_length(512)
    w.add_token_list([f"tok{i}" for i in range(300)])
    w.add_token_scores([0.0] * 300)
    w.add_array("general.tags", ["a", "b"])  # an array of strings before the scalars that follow
    w.add_rope_freq_base(10000.0)
    w.add_tensor("token_embd.weight", np.zeros((300, 96), dtype=np.float32))
    if not tied:
        w.add_tensor("output.weight", np.zeros((300, 96), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_header_against_ggufs_reader(tmp_path, tied):
    from gguf import GGUFReader

    path = tmp_path / "m.gguf"
    write_gguf(path, tied=tied)
    meta, tensors, vocab = gguf_metadata(str(path), path.stat().st_mtime_ns)
    reader = GGUFReader(str(path))
    for key, field in reader.fields.items():
        if key in meta:
            assert meta[key] == pytest.approx(field.contents()), key
    assert vocab == len(reader.fields["tokenizer.ggml.tokens"].data) == 300
    assert tensors == {t.name for t in reader.tensors}
    c = gguf_config(path)
    assert (c.model_type, c.hidden_size, c.intermediate_size, c.num_hidden_layers) == ("llama", 96, 256, 3)
    assert (c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (6, 2, 300)
    assert c.tie_word_embeddings is tied


def test_not_a_gguf_and_a_broken_config_are_sentences(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + bytes(32))
    with pytest.raises(ModelError, match="not a GGUF"):
        gguf_config(bad)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ModelError, match="Cannot read the model config"):
        folder_config(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "llama", "text_config": {"hidden_size": 8}})
    )
    assert folder_config(tmp_path).get_text_config().hidden_size == 8
