"""Prefix tuning, prompt tuning and P-tuning on the tiny random Llama: only the prompt encoder
trains, the loss falls, a save loads back to the same logits, batched generation equals
one-at-a-time, and a full `lmtune train` run reloads through `load_target`."""

from __future__ import annotations

import json

import pytest
import torch
from tests.conftest import train_steps

from lmtune.infer.generate import GenerationOptions, generate_replies
from lmtune.methods.base import get_method, method_options

CASES = {
    "prefix": {},
    "prefix_projection": {"prefix_projection": True},
    "prompt": {},
    "prompt_text": {"prompt_init": "text", "prompt_init_text": "Answer with the sum."},
    "ptuning_mlp": {"encoder": "mlp"},
    "ptuning_lstm": {"encoder": "lstm"},
}
CONVERSATIONS = [
    [{"role": "user", "content": "hello"}],
    [{"role": "user", "content": "Tell me a long story about a cat, a dog and a very patient goldfish."}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}],
]


def method_name(case: str) -> str:
    return case.split("_")[0]


def prepared(model_dir, case: str, **extra):
    """A fresh base (tests must not share a frozen, wrapped one) prepared by the method."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    name = method_name(case)
    opts = method_options(name, {"num_virtual_tokens": 6, **CASES[case], **extra})
    method = get_method(name)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    method.check(base, opts)
    return method, method.prepare(base, opts)


def fixed_batch(tokenizer):
    enc = tokenizer(["What is 2 plus 3? 5.", "hello there, friend"], return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {**enc, "labels": labels}


def logits(model, tokenizer):
    model.eval()
    with torch.no_grad():
        return model(**tokenizer(["What is 2 plus 3?"], return_tensors="pt")).logits


@pytest.mark.parametrize("case", list(CASES))
def test_only_the_prompt_encoder_trains_and_the_loss_falls(case, tiny_model_dir, smollm2_tokenizer):
    _, model = prepared(tiny_model_dir, case)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    encoder = {f"prompt_encoder.default.{n}" for n, _ in model.prompt_encoder["default"].named_parameters()}
    assert trainable == encoder and trainable
    assert not any(p.requires_grad for p in model.get_base_model().parameters())
    losses = train_steps(model, fixed_batch(smollm2_tokenizer))
    assert losses[-1] < losses[0] - 0.2, losses


@pytest.mark.parametrize("case", ["prefix", "prefix_projection", "prompt_text", "ptuning_lstm"])
def test_save_and_peft_load_give_identical_logits(case, tiny_model_dir, smollm2_tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    method, model = prepared(tiny_model_dir, case)
    train_steps(model, fixed_batch(smollm2_tokenizer), steps=3)
    method.save(model, tmp_path)
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "adapter_model.safetensors").is_file()
    trained = logits(model, smollm2_tokenizer)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    untouched = logits(base, smollm2_tokenizer)
    reloaded = logits(PeftModel.from_pretrained(base, str(tmp_path)), smollm2_tokenizer)
    torch.testing.assert_close(reloaded, trained, rtol=0, atol=1e-5)
    assert not torch.allclose(trained[:, -1], untouched[:, -1], atol=1e-3)  # the prompt changes the model
    again = method.load(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path)
    torch.testing.assert_close(logits(again, smollm2_tokenizer), trained, rtol=0, atol=1e-5)


def test_prefix_projection_adds_the_mlp(tiny_model_dir):
    _, plain = prepared(tiny_model_dir, "prefix")
    _, projected = prepared(tiny_model_dir, "prefix_projection", encoder_hidden_size=24)
    cfg = plain.get_base_model().config  # 2 layers; GQA: 2 kv heads of 16 dims
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim
    assert plain.prompt_encoder["default"].embedding.weight.shape == (6, kv)
    assert not hasattr(plain.prompt_encoder["default"], "transform")
    encoder = projected.prompt_encoder["default"]
    assert encoder.embedding.weight.shape == (6, cfg.num_key_value_heads * cfg.head_dim)
    assert [tuple(m.weight.shape) for m in encoder.transform if hasattr(m, "weight")] == [(24, 32), (kv, 24)]
    # Without encoder_hidden_size the projection is as wide as the model.
    _, default = prepared(tiny_model_dir, "prefix_projection")
    assert default.prompt_encoder["default"].transform[0].out_features == cfg.hidden_size


def test_ptuning_encoder_mlp_or_lstm(tiny_model_dir):
    _, mlp = prepared(tiny_model_dir, "ptuning_mlp", encoder_hidden_size=24)
    _, lstm = prepared(tiny_model_dir, "ptuning_lstm")
    mlp_encoder, lstm_encoder = mlp.prompt_encoder["default"], lstm.prompt_encoder["default"]
    assert not hasattr(mlp_encoder, "lstm_head")
    assert [m.out_features for m in mlp_encoder.mlp_head if isinstance(m, torch.nn.Linear)] == [24, 24, 64]
    assert isinstance(lstm_encoder.lstm_head, torch.nn.LSTM)
    assert lstm_encoder.lstm_head.hidden_size == 64  # the model's hidden size by default


def test_prompt_text_init_is_the_texts_token_embeddings(tiny_model_dir, smollm2_tokenizer):
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    text = "Answer with the sum."  # 5 tokens, repeated over 6 virtual tokens
    _, model = prepared(tiny_model_dir, "prompt_text")
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) < 6
    words = model.get_base_model().get_input_embeddings()
    expected = words(torch.tensor((ids * 2)[:6]))
    assert torch.equal(model.prompt_encoder["default"].embedding.weight, expected)
    # The same as PEFT's own TEXT init (this tokenizer adds no BOS, which PEFT would keep).
    peft_cfg = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=6,
        prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text=text,
        tokenizer_name_or_path=str(tiny_model_dir),
    )
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), peft_cfg)
    assert torch.equal(peft_model.prompt_encoder["default"].embedding.weight, expected)


def test_prompt_text_init_without_a_tokenizer_is_a_config_error(tiny_model_dir, tmp_path):
    import shutil

    from lmtune.errors import ConfigError

    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, tmp_path / name)
    with pytest.raises(ConfigError, match="tokenizer"):
        prepared(tmp_path, "prompt_text")


@pytest.mark.parametrize("case", ["prefix", "prompt", "ptuning_mlp", "ptuning_lstm"])
def test_batched_greedy_generation_equals_one_at_a_time(case, tiny_model_dir, smollm2_tokenizer):
    """Left padding must not move the text relative to the virtual tokens (PEFT drops the position
    ids of prompt and P-tuning; the method gives them back)."""
    _, model = prepared(tiny_model_dir, case)
    train_steps(model, fixed_batch(smollm2_tokenizer), steps=4, lr=5e-2)  # a prompt that matters
    greedy = GenerationOptions(max_new_tokens=10)
    batched = generate_replies(model, smollm2_tokenizer, CONVERSATIONS, greedy, batch_size=3)
    alone = [generate_replies(model, smollm2_tokenizer, [c], greedy)[0] for c in CONVERSATIONS]
    assert batched == alone
    assert all(batched) and len(set(batched)) > 1
    # Replies can agree by luck; the scores of a padded row must equal its scores alone.
    tok = smollm2_tokenizer
    texts = ["hi", "Tell me a long story about a cat and a dog, please."]
    kw = {"max_new_tokens": 3, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    kw["pad_token_id"] = tok.pad_token_id
    side, tok.padding_side = tok.padding_side, "left"
    try:
        with torch.no_grad():
            together = model.generate(**tok(texts, return_tensors="pt", padding=True), **kw).logits
            for row, text in enumerate(texts):
                single = model.generate(**tok([text], return_tensors="pt"), **kw).logits
                for step in range(3):
                    torch.testing.assert_close(together[step][row], single[step][0], rtol=0, atol=1e-4)
    finally:
        tok.padding_side = side


# Through the trainer --------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["prefix", "prompt_text", "ptuning_lstm"])
def test_trainer_run_reloads_with_load_target(case, tiny_model_dir, sums_file, tmp_path):
    from rich.console import Console

    from lmtune.config.loader import validate_config
    from lmtune.run.load import load_target
    from lmtune.train.runner import train

    name = method_name(case)
    cfg = validate_config(
        {
            "model": {"name": str(tiny_model_dir)},
            "data": {"path": str(sums_file)},
            "method": {"name": name, "num_virtual_tokens": 6, **CASES[case]},
            "train": {"max_steps": 6, "lr": 3e-2, "batch_size": 4, "log_steps": 1, "bf16": False},
            "output": {"dir": str(tmp_path / "run")},
        }
    )
    result = train(cfg, console=Console(quiet=True))
    s = result.summary
    assert s["steps"] == 6 and s["train_loss"]["last"] < s["train_loss"]["first"]
    assert 0 < s["parameters"]["trainable"] < s["parameters"]["total"] * 0.05  # LSTM encoder: 2.9%
    marker = json.loads((result.run_dir / "lmtune_run.json").read_text())
    assert marker["method"] == name and marker["mergeable"] is False
    loaded = load_target(str(result.run_dir), quiet=True)
    tok = loaded.tokenizer
    torch.testing.assert_close(logits(loaded.model, tok), logits(result.model, tok), rtol=0, atol=1e-5)
