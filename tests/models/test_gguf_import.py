"""GGUF import on the real SmolLM2-135M GGUF, checked against transformers' own GGUF loader.

The import (~25 s) runs once per session, through the alias cache in a session-wide
LMTUNE_HOME that test_resolve.py shares, so the whole suite dequantizes the file once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtune.errors import ModelError
from lmtune.models.aliases import alias_gguf_path
from lmtune.models.gguf_import import end_of_turn_id, import_gguf
from lmtune.models.resolve import ModelRef, resolve_model_ref

ALIAS = "smollm2-135m-instruct"
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another?"},
]


@pytest.fixture(scope="session")
def gguf() -> Path:
    return alias_gguf_path(ALIAS)


@pytest.fixture(scope="session")
def imported(tmp_path_factory) -> Path:
    """The alias imported into the session-wide cache (same folder name as in test_resolve.py)."""
    home = tmp_path_factory.getbasetemp() / "lmtune_home_shared"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMTUNE_HOME", str(home))
        return Path(resolve_model_ref(ALIAS).path)


@pytest.fixture(scope="session")
def gguf_tokenizer(gguf):
    """The GGUF's own tokenizer (lmtune's loader is AutoTokenizer plus a pad fallback it does not need)."""
    from lmtune.models.load import load_tokenizer

    return load_tokenizer(resolve_model_ref(str(gguf)))


@pytest.fixture(scope="session")
def gguf_model(gguf):
    """The reference: transformers loading the GGUF directly, no lmtune code involved."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()


@pytest.fixture(scope="session")
def folder_model(imported):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(imported).eval()


pytestmark = pytest.mark.realmodel


def test_folder_has_the_files_of_a_normal_model(imported):
    names = {p.name for p in imported.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not [n for n in names if n.endswith(".gguf")]


def test_config_is_clean_and_loads(imported):
    from transformers import AutoConfig

    raw = json.loads((imported / "config.json").read_text())
    assert "quantization_config" not in raw
    assert "_model_name_or_path" not in raw
    config = AutoConfig.from_pretrained(imported)
    assert config.model_type == "llama"
    assert getattr(config, "quantization_config", None) is None


def test_generation_config_stops_on_end_of_turn(imported, gguf_tokenizer):
    gen = json.loads((imported / "generation_config.json").read_text())
    im_end = gguf_tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert im_end in eos
    assert gen["bos_token_id"] == gguf_tokenizer.bos_token_id
    assert gen["pad_token_id"] is not None


def test_folder_model_is_plain_and_matches_gguf_logits(folder_model, gguf_model, gguf_tokenizer):
    import torch

    assert getattr(folder_model, "hf_quantizer", None) is None
    assert folder_model.dtype == torch.float32
    ids = gguf_tokenizer("The quick brown fox jumps over", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = gguf_model(ids).logits
        got = folder_model(ids).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_load_causal_lm_straight_from_gguf(gguf, gguf_model, gguf_tokenizer, capsys):
    """The `.gguf` path of the loader: dense, trainable, no quantizer, same logits as transformers."""
    import torch

    from lmtune.models.load import count_parameters, load_causal_lm

    model = load_causal_lm(resolve_model_ref(str(gguf)))
    assert f"Loaded {gguf.name}: 134.5M parameters, float32, cpu" in capsys.readouterr().err
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    total, trainable = count_parameters(model)
    assert total == trainable == 134_515_008
    ids = gguf_tokenizer("Hello there, how are", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, gguf_model(ids).logits, atol=1e-5)


def test_tokenizer_keeps_chat_template(imported, gguf_tokenizer):
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(imported)
    assert reloaded.chat_template == gguf_tokenizer.chat_template
    for prompt in (False, True):
        expected = gguf_tokenizer.apply_chat_template(
            CONVERSATION, tokenize=False, add_generation_prompt=prompt
        )
        assert (
            reloaded.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=prompt)
            == expected
        )
    assert reloaded(expected)["input_ids"] == gguf_tokenizer(expected)["input_ids"]
    assert reloaded.eos_token == "<|im_end|>"
    assert reloaded.model_max_length == 8192  # from the config; a GGUF carries none


def test_greedy_answer_mentions_paris(imported, folder_model):
    import torch

    from lmtune.models.load import load_tokenizer

    tokenizer = load_tokenizer(ModelRef(ALIAS, "alias", str(imported), None, ALIAS))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = folder_model.generate(**inputs, max_new_tokens=16, do_sample=False)
    new = out[0][inputs["input_ids"].shape[1] :]
    assert "Paris" in tokenizer.decode(new, skip_special_tokens=True)
    assert new[-1].item() == tokenizer.convert_tokens_to_ids("<|im_end|>")  # stopped at end of turn


def test_end_of_turn_id(gguf_tokenizer):
    assert end_of_turn_id(gguf_tokenizer) == gguf_tokenizer.convert_tokens_to_ids("<|im_end|>")
    no_template = type("T", (), {"chat_template": None})()
    assert end_of_turn_id(no_template) is None


def test_import_writes_atomically(monkeypatch, tmp_path, gguf, tiny_model_dir):
    """Fast path with the tiny model standing in for the dequantized one: the folder appears
    complete under its final name, and a failure part-way leaves neither it nor a temp folder."""
    import transformers

    from lmtune.models import gguf_import

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)

    def tiny_model(*_args, **_kwargs):
        return transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    monkeypatch.setattr(gguf_import, "load_dense_from_gguf", tiny_model)
    out = import_gguf(gguf, tmp_path / "ok")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]

    def boom(folder):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(gguf_import, "_check_written", boom)
    with pytest.raises(RuntimeError):
        import_gguf(gguf, tmp_path / "broken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        import_gguf(tmp_path / "nope.gguf", tmp_path / "out")


def test_not_a_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a gguf")
    with pytest.raises(ModelError, match="not a GGUF file"):
        import_gguf(fake, tmp_path / "out")


def test_unsupported_architecture(tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    odd = tmp_path / "odd.gguf"
    writer = GGUFWriter(str(odd), arch="notanarch")
    writer.add_name("odd")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelError, match=r"notanarch.*Supported GGUF architectures: .*llama"):
        import_gguf(odd, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_non_empty_out_dir_and_bad_dtype(tmp_path, gguf):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(ModelError, match="not empty"):
        import_gguf(gguf, tmp_path)
    with pytest.raises(ModelError, match="Unknown dtype"):
        import_gguf(gguf, tmp_path / "new", dtype="int8")


def test_cli_reports_errors_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from lmtune.cli.models_cmd import app

    result = CliRunner().invoke(app, ["import-gguf", str(tmp_path / "nope.gguf"), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "GGUF file not found" in result.output
    assert "Traceback" not in result.output
