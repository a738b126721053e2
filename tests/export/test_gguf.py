"""GGUF export: the file read back by transformers' own GGUF reader (not ours) gives the source's
weights (rounded as stored), config, tokenizer and logits; quantized files are smaller and within
their tolerance (q4_0 also run in llama.cpp; every family at f16 / q8_0 in test_gguf_families.py);
a broken file is caught; the Modelfile speaks ChatML.

The exports are made once per module (reading a GGUF back costs ~10 s, mostly transformers parsing
the 49k-token vocabulary), and the tests look at the files and reports from several sides.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from tests.conftest import TINY

from lmtune.errors import ConfigError
from lmtune.export.gguf import QUANT_TOLERANCES, export_gguf, verify_gguf, write_modelfile
from lmtune.export.gguf import tensors as gguf_tensors
from lmtune.export.gguf import writer as gguf_writer
from lmtune.export.gguf.checks import file_tensor_types
from lmtune.export.gguf.llamacpp import greedy_agreement
from lmtune.export.gguf.vocab import pre_tokenizer_name, vocab_metadata

HAVE_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = ["What is 2 plus 2?", "Name a colour."]  # two short prompts keep each read-back quick
QUANTS = ("f16", "q8_0", "q4_0")


def _read_fields(path: Path) -> tuple[dict, list[str]]:
    """(metadata {key: value}, tensor names) through gguf's own GGUFReader."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    wanted = (
        "general.architecture",
        "general.name",
        "tokenizer.chat_template",
        "tokenizer.ggml.eos_token_id",
    )
    fields = {key: reader.fields[key].contents() for key in wanted if key in reader.fields}
    fields["n_tokens"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    fields["tokenizer.ggml.pre"] = reader.fields["tokenizer.ggml.pre"].contents()
    return fields, [tensor.name for tensor in reader.tensors]


def _export_all(model, tokenizer, out_dir: Path) -> dict[str, dict]:
    results = {}
    for quant in QUANTS:
        notes: list[str] = []
        path = export_gguf(
            model, tokenizer, out_dir / f"m-{quant}.gguf", quant=quant, name="tiny", notes=notes
        )
        # llama.cpp runs q4_0 here; f16 and q8_0 of every family run in it in test_gguf_families.py
        report = verify_gguf(path, model, tokenizer, quant=quant, prompts=PROMPTS, llama_cpp=quant == "q4_0")
        results[quant] = {"path": path, "report": report, "notes": notes}
    return results


@pytest.fixture(scope="module")
def llama(one_torch_thread, tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model, tokenizer, _export_all(model, tokenizer, tmp_path_factory.mktemp("gguf_llama"))


@pytest.fixture(scope="module")
def qwen2(one_torch_thread, tiny_qwen2_dir, tmp_path_factory):
    """The tiny Qwen2 with random q/k/v biases: initialised to zero, a dropped bias would not show."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir).eval()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.copy_(torch.randn(proj.bias.shape, generator=generator))
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_dir)
    return model, tokenizer, _export_all(model, tokenizer, tmp_path_factory.mktemp("gguf_qwen2"))


@pytest.mark.parametrize("which,arch", [("llama", "llama"), ("qwen2", "qwen2")])
def test_f16_reads_back_as_the_source(which, arch, request):
    model, tokenizer, results = request.getfixturevalue(which)
    report = results["f16"]["report"]
    assert report["weights_match"] and report["weights_max_abs_diff"] == 0, report["weights_mismatched"]
    assert report["config_match"], report["config_mismatched"]
    assert report["tokenizer_match"] and report["chat_template_match"]
    assert report["greedy_match"] and len(report["prompts"]) == len(PROMPTS)
    assert 0 < report["max_abs_logit_diff"] <= QUANT_TOLERANCES["f16"]["max"]  # rounded, yet close
    assert report["passed"]
    assert report["tensor_types"] == {"F16": 16, "F32": 5 if arch == "llama" else 11}  # norms (+ biases) f32

    fields, names = _read_fields(results["f16"]["path"])
    assert fields["general.architecture"] == arch and fields["general.name"] == "tiny"
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    assert fields["n_tokens"] == model.config.vocab_size
    # transformers loads the tiny Qwen2's tokenizer folder as a Qwen2 tokenizer, with Qwen2's split regex
    assert fields["tokenizer.ggml.pre"] == ("gpt-2" if arch == "llama" else "qwen2")
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "output.weight" in names  # untied head
    assert ("blk.0.attn_q.bias" in names) == (arch == "qwen2")


@pytest.mark.parametrize("which", ["llama", "qwen2"])
def test_quantized_files_are_smaller_and_within_tolerance(which, request):
    _, _, results = request.getfixturevalue(which)
    sizes = {quant: results[quant]["path"].stat().st_size for quant in QUANTS}
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"]
    for quant, stored in (("q8_0", "Q8_0"), ("q4_0", "Q4_0")):
        report = results[quant]["report"]
        assert report["weights_match"] and report["config_match"] and report["tokenizer_match"]
        assert report["tensor_types"][stored] >= 15
        assert report["max_abs_logit_diff"] <= QUANT_TOLERANCES[quant]["max"]
        assert report["mean_abs_logit_diff"] <= QUANT_TOLERANCES[quant]["mean"]
        assert report["passed"]
    # the rounding grows with fewer bits, and q4_0 keeps the output head at q8_0 (said in the notes)
    assert results["q8_0"]["report"]["mean_abs_logit_diff"] < results["q4_0"]["report"]["mean_abs_logit_diff"]
    assert results["q4_0"]["report"]["tensor_types"]["Q8_0"] == 1
    assert any("output.weight) is stored as q8_0" in note for note in results["q4_0"]["notes"])
    cpp = results["q4_0"]["report"]["llama_cpp"]
    if HAVE_LLAMA_CPP:  # the q4_0 file loads and answers in llama.cpp within q4_0's tolerance
        assert cpp["passed"] and cpp["tokenizer_match"], cpp
        assert results["q4_0"]["report"]["checked_with"] == ["llama.cpp", "transformers"]
    else:
        assert "not installed" in cpp["skipped"]


def test_tied_head_writes_no_output_tensor(tmp_path, smollm2_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY, "tie_word_embeddings": True})).eval()
    path = export_gguf(model, smollm2_tokenizer, tmp_path / "tied.gguf", quant="q8_0", notes=[])
    _, names = _read_fields(path)
    assert "output.weight" not in names and "token_embd.weight" in names
    report = verify_gguf(path, model, smollm2_tokenizer, quant="q8_0", prompts=PROMPTS[:1], llama_cpp=False)
    assert report["config_match"] and report["weights_match"] and report["passed"]


def test_a_broken_file_fails_verification(llama, tmp_path, monkeypatch):
    """Without llama.cpp's q/k permutation the file is wrong; at q4_0 the logit tolerance alone is
    loose, the exact weight check is what catches it."""
    model, tokenizer, _ = llama
    monkeypatch.setattr(gguf_tensors, "permute_rotary_rows", lambda weights, heads: weights)
    path = export_gguf(model, tokenizer, tmp_path / "broken.gguf", quant="q4_0", notes=[])
    report = verify_gguf(path, model, tokenizer, quant="q4_0", prompts=PROMPTS[:1], llama_cpp=False)
    assert not report["weights_match"] and not report["passed"]
    assert "model.layers.0.self_attn.q_proj.weight" in report["weights_mismatched"]
    assert "model.layers.0.self_attn.v_proj.weight" not in report["weights_mismatched"]


def test_permutation_is_llama_cpps_and_transformers_undoes_it():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    heads, head_dim, width = 2, 8, 3
    weights = np.arange(heads * head_dim * width, dtype=np.float32).reshape(heads * head_dim, width)
    permuted = gguf_tensors.permute_rotary_rows(weights, heads)
    half = head_dim // 2
    for h in range(heads):  # row i of each half goes to 2i / 2i+1 within its head (an explicit loop)
        for i in range(half):
            np.testing.assert_array_equal(permuted[h * head_dim + 2 * i], weights[h * head_dim + i])
            np.testing.assert_array_equal(
                permuted[h * head_dim + 2 * i + 1], weights[h * head_dim + half + i]
            )
    undone = LlamaTensorProcessor()._reverse_permute_weights(permuted, heads, heads)
    np.testing.assert_array_equal(undone, weights)


def test_unsupported_architecture_is_a_sentence(tmp_path, smollm2_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ConfigError, match=r"GPT2LMHeadModel.*gpt2.*Supported.*llama.*qwen2"):
        export_gguf(model, smollm2_tokenizer, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())


def test_user_mistakes_are_sentences(llama, tmp_path):
    model, tokenizer, _ = llama
    with pytest.raises(ConfigError, match="Unknown GGUF quant 'q5_k'"):
        export_gguf(model, tokenizer, tmp_path / "x.gguf", quant="q5_k")
    with pytest.raises(ConfigError, match=r"end in \.gguf"):
        export_gguf(model, tokenizer, tmp_path / "x.bin")

    class Adapted(torch.nn.Module):
        peft_config: dict = {}

    with pytest.raises(ConfigError, match="Merge them"):
        export_gguf(Adapted(), tokenizer, tmp_path / "x.gguf")


def test_failed_write_leaves_no_file(llama, tmp_path, monkeypatch):
    model, tokenizer, _ = llama

    def fail(plan):
        yield np.zeros(1, dtype=np.float32)
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_writer, "_converted", fail)
    with pytest.raises((RuntimeError, AssertionError)):
        export_gguf(model, tokenizer, tmp_path / "x.gguf", notes=[])
    assert not list(tmp_path.iterdir())


def test_rows_that_do_not_fill_a_block_fall_back_to_f16(tmp_path, smollm2_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY, "intermediate_size": 80})).eval()  # ffn_down rows of 80
    notes: list[str] = []
    path = export_gguf(model, smollm2_tokenizer, tmp_path / "odd.gguf", quant="q8_0", notes=notes)
    types = file_tensor_types(path)
    assert types["blk.0.ffn_down.weight"] == GGMLQuantizationType.F16
    assert types["blk.0.ffn_up.weight"] == GGMLQuantizationType.Q8_0
    assert any("blk.0.ffn_down.weight as f16" in note for note in notes)


def test_eos_is_the_end_of_turn_token_when_the_generation_config_says_so(smollm2_tokenizer):
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.eos_token = "<|endoftext|>"  # id 0; the template still ends turns with <|im_end|> (id 2)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert vocab_metadata(tokenizer, 49152, [0, im_end]).eos_id == im_end
    assert vocab_metadata(tokenizer, 49152, 0).eos_id == 0
    meta = vocab_metadata(tokenizer, 49152 + 8, None)
    assert meta.eot_id == im_end and not meta.add_bos
    assert meta.tokens[-1] == f"[PAD{49159}]" and meta.token_types[-1] == 5  # unused embedding rows
    assert meta.token_types[im_end] == 3 and meta.token_types[100] == 1  # control, normal


def test_pre_tokenizer_names():
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert pre_tokenizer_name(byte_level) == "gpt-2"  # llama.cpp's name ("gpt2" is refused by it)
    digits = {"type": "Digits", "individual_digits": True}
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [digits, byte_level]}) == "smollm"
    split = {"type": "Split", "pattern": {"Regex": PRETOKENIZE_REGEX}, "behavior": "Isolated"}
    no_regex = {**byte_level, "use_regex": False}
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [split, no_regex]}) == "qwen2"
    with pytest.raises(ConfigError, match="not one llama.cpp has a name for"):
        pre_tokenizer_name({"type": "Whitespace"})


def test_sentencepiece_style_tokenizer_is_written_as_llama_vocab():
    """Pieces with "▁", byte pieces typed BYTE, scores = minus the rank of the merge making them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<0x41>": 1, "▁": 2, "a": 3, "b": 4, "ab": 5, "▁ab": 6}
    merges = [("a", "b"), ("▁", "ab")]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    meta = vocab_metadata(tokenizer, 7)
    assert meta.model == "llama" and meta.pre is None and meta.merges == [] and meta.add_space_prefix
    assert meta.tokens == list(vocab)
    assert meta.token_types[1] == 6 and meta.token_types[3] == 1  # BYTE, NORMAL
    assert meta.scores[5] == 0.0 and meta.scores[6] == -1.0  # "ab" merges first, then "▁ab"
    assert meta.scores[3] < meta.scores[6]  # single characters are never merge results

    wordpiece = Tokenizer(models.WordPiece(vocab={"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    with pytest.raises(ConfigError, match="byte-level BPE.*SentencePiece-style.*WordPiece"):
        vocab_metadata(PreTrainedTokenizerFast(tokenizer_object=wordpiece), 2)


def test_greedy_agreement_rule():
    """Equal until the first difference, which must be a near tie in the source's own logits."""
    rows = [np.array([0.0, 5.0, 4.9, 1.0]), np.array([0.0, 1.0, 3.0, 0.0])]
    assert greedy_agreement([1, 2], rows, [1, 2], 0.5) == {
        "identical": True,
        "agrees": True,
        "same_prefix": 2,
    }
    tie = greedy_agreement([1, 2], rows, [2, 2], 0.5)  # 5.0 vs 4.9 at the first step: a near tie
    assert tie["agrees"] and not tie["identical"] and abs(tie["flip_logit_gap"] - 0.1) < 1e-9
    far = greedy_agreement([1, 2], rows, [1, 3], 0.5)  # 3.0 vs 0.0 at the second step: a real difference
    assert not far["agrees"] and far["same_prefix"] == 1
    assert not greedy_agreement([1, 2], rows, [1], 0.5)["agrees"]  # stopped early


def test_modelfile_for_chatml(llama, smollm2_tokenizer):
    _, _, results = llama
    path = results["q8_0"]["path"]
    text = write_modelfile(path, smollm2_tokenizer, path.parent).read_text()
    assert text.startswith(f"FROM ./{path.name}\n")
    assert "<|im_start|>user\n{{ .Content }}<|im_end|>\n" in text
    assert '{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant\n' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text


def test_modelfile_without_a_default_system_or_for_another_template(tmp_path, smollm2_tokenizer):
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.chat_template = (  # Qwen-like ChatML with no default system prompt
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    text = write_modelfile(tmp_path / "m.gguf", tokenizer, tmp_path).read_text()
    assert "TEMPLATE" in text and "SYSTEM" not in text
    tokenizer.chat_template = (  # Zephyr style: not ChatML
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '</s>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    )
    text = write_modelfile(tmp_path / "m.gguf", tokenizer, tmp_path).read_text()
    assert "TEMPLATE not written" in text and 'TEMPLATE """' not in text
    assert 'PARAMETER stop "<|im_end|>"' in text  # the tokenizer's eos still stops generation


@pytest.mark.slow  # 2-5 minutes on 2 cores; the q8_0 writer is checked on tiny models of every family
@pytest.mark.realmodel
def test_smollm2_q8_0_export_verifies(tmp_path, one_torch_thread):
    """The real SmolLM2-135M-Instruct: q8_0 reads back with the same weights (as rounded), tokenizer
    and greedy answers, and logit differences inside the tolerance measured for the docs."""
    from lmtune.run.load import load_target

    target = load_target("smollm2-135m-instruct", quiet=True)
    path = export_gguf(target.model, target.tokenizer, tmp_path / "smollm2.q8_0.gguf", quant="q8_0", notes=[])
    report = verify_gguf(path, target.model, target.tokenizer, quant="q8_0")
    assert report["passed"] and report["weights_match"] and report["config_match"]
    assert report["tokenizer_match"] and report["greedy_match"]
    assert report["tensor_types"] == {"Q8_0": 211, "F32": 61}
    assert 0.05 < report["mean_abs_logit_diff"] <= QUANT_TOLERANCES["q8_0"]["mean"]
    assert "Paris" in report["prompts"][0]["greedy_gguf"]
    assert 130e6 < path.stat().st_size < 160e6
    cpp = report["llama_cpp"]  # the runtime users load it in (its q8_0 maths also rounds activations)
    if HAVE_LLAMA_CPP:
        assert cpp["passed"] and cpp["tokenizer_match"] and cpp["greedy_agrees"], cpp
        assert cpp["max_abs_logit_diff"] <= QUANT_TOLERANCES["q8_0"]["max"]
        assert sum(row["same_prefix"] for row in cpp["prompts"]) >= 16  # long stretches identical
    else:
        assert "not installed" in cpp["skipped"]
