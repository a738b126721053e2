"""Every model family a user brings trains, chats, merges and exports, each on a tiny random model of the
family built from its real tokenizer and chat template (tests/families.py).

One LoRA run per family (module-scoped) is shared by the chat, merge and ONNX checks. Each step sees
the whole data set (16 packed rows, batch_size 16), so the first and last logged losses are on the
same batch and "the loss falls" is a real comparison.
"""

from __future__ import annotations

import json

import pytest
import torch
from tests.families import MODEL_FAMILIES

from lmtune.config.loader import validate_config
from lmtune.errors import ConfigError
from lmtune.models.families import FAMILIES, LORA_TARGETS, VERIFIED
from lmtune.train.runner import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPT = [{"role": "user", "content": "What is 2 plus 3?"}]
CHATS = [PROMPT, [{"role": "user", "content": "Name three colours."}], [{"role": "user", "content": "Hi"}]]


def run_config(family: str, model_dir, data, out, method: dict):
    data_section = {"path": str(data), "max_length": 64}
    return validate_config(
        {
            "model": {"name": str(model_dir)},
            "data": data_section,
            "method": {"r": 4, "alpha": 8, **method},
            "train": {
                "max_steps": 2,
                "lr": 1e-2,
                "warmup_ratio": 0,
                "scheduler": "constant",
                "batch_size": 16,
                "bf16": False,
                "gradient_checkpointing": False,  # "auto" builds a meta model to estimate memory: slow
            },
            "output": {"dir": str(out)},
        }
    )


def logged_losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def lora_run(family_model_dir, sums_file, tmp_path_factory):
    runs: dict = {}

    def get(family: str):
        if family not in runs:
            out = tmp_path_factory.mktemp(f"run_{family}") / "run"
            runs[family] = train(
                run_config(family, family_model_dir(family), sums_file, out, {"name": "lora"})
            )
        return runs[family]

    return get


def adapted_modules(model) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if hasattr(m, "lora_A")}


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_lora_trains_the_family_targets(family, lora_run):
    result = lora_run(family)
    losses = logged_losses(result.run_dir)
    assert len(losses) >= 2 and losses[-1] < losses[0], losses
    model_type = result.model.config.model_type
    assert model_type == FAMILIES[family].model_type
    # Exactly the row's modules (those that exist in the model), never the head or an MoE router.
    present = {
        n.removesuffix(".base_layer").rsplit(".", 1)[-1]
        for n, m in result.model.named_modules()
        if isinstance(m, torch.nn.Linear) and "lora_" not in n
    }
    assert adapted_modules(result.model) == set(LORA_TARGETS[model_type]) & present
    saved = json.loads((result.run_dir / "adapter_config.json").read_text())
    assert set(saved["target_modules"]) == set(LORA_TARGETS[model_type])
    assert not any(k in adapted_modules(result.model) for k in ("lm_head", "gate", "router"))
    if getattr(result.model.config, "attn_logit_softcapping", None):  # Gemma 2: SDPA cannot soft-cap
        assert result.model.config._attn_implementation == "eager"


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_qlora_trains(family, family_model_dir, sums_file, tmp_path):
    pytest.importorskip("bitsandbytes")
    method = {"name": "qlora"}
    result = train(run_config(family, family_model_dir(family), sums_file, tmp_path / "run", method))
    losses = logged_losses(result.run_dir)
    assert losses[-1] < losses[0], losses
    assert any("Linear4bit" in type(m).__name__ for m in result.model.modules())


def greedy_by_hand(model, ids: torch.Tensor, steps: int, eos: set[int]) -> list[int]:
    """Argmax decoding with full forwards (no cache, no generate): the independent reference."""
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(steps):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt in eos:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_chat_answers_like_the_model(family, lora_run):
    from lmtune.infer.generate import GenerationOptions, _eos_ids, generate_replies, render_prompt
    from lmtune.run.load import load_target

    loaded = load_target(str(lora_run(family).run_dir), quiet=True)
    model, tok = loaded.model.eval(), loaded.tokenizer
    # In one left-padded batch, as lmtune chat / generate / serve batch them.
    replies = generate_replies(model, tok, CHATS, GenerationOptions(max_new_tokens=8))
    eos = set(_eos_ids(model, tok))
    expected = []
    for chat in CHATS:
        ids = tok(render_prompt(tok, chat), return_tensors="pt", add_special_tokens=False)["input_ids"]
        expected.append(tok.decode(greedy_by_hand(model, ids, 8, eos), skip_special_tokens=True).strip())
    assert any(expected), "the tiny model stopped at once every time: the comparison would be vacuous"
    assert replies == expected


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_merge_parity(family, lora_run, tmp_path):
    from lmtune.export.merge import merge_run

    result = merge_run(lora_run(family).run_dir, tmp_path / "merged", max_new_tokens=8, say=lambda *_: None)
    assert result.parity["passed"] and result.parity["greedy_identical"] is True
    assert result.parity["reloaded_max_abs_diff"] == 0


ONNX_FAMILIES = [f for f in MODEL_FAMILIES if VERIFIED[f]["onnx"] == "yes"]
ONNX_REFUSED = [f for f in MODEL_FAMILIES if VERIFIED[f]["onnx"] == "refused"]


# CI exports the families whose graphs differ most (rope scaling, soft-capping, fused projections,
# biases); the rest (same graph shapes) under `slow`.
ONNX_IN_CI = ("llama3", "gemma2", "phi3", "qwen2")


@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=() if f in ONNX_IN_CI else pytest.mark.slow) for f in ONNX_FAMILIES]
)
def test_onnx_export_verifies(family, lora_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from lmtune.export.merge import plain_model
    from lmtune.export.onnx import export_onnx

    model, tok, _ = plain_model(str(lora_run(family).run_dir), say=lambda *_: None)
    report = export_onnx(model, tok, tmp_path / "onnx", max_new_tokens=8, threads=1, say=lambda *_: None)
    assert report["passed"] and report["greedy_identical"] and report["greedy_tokens"] > 0


@pytest.mark.parametrize("family", ONNX_REFUSED)
def test_onnx_export_refuses_moe_up_front(family, family_model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmtune.export.onnx import export_onnx

    folder = family_model_dir(family)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with pytest.raises(ConfigError, match="experts"):
        export_onnx(model, AutoTokenizer.from_pretrained(folder), tmp_path / "onnx", say=lambda *_: None)
    assert not (tmp_path / "onnx" / "model.onnx").exists()


@pytest.mark.parametrize("family", ["phi3", "mixtral", "qwen3_moe", "gemma3"])
def test_ia3_and_dora_take_the_family_rows(family, family_model_dir):
    """PEFT's own IA3 table names Mixtral's old expert layers (w2) and lacks Phi-3 and Qwen3-MoE."""
    from transformers import AutoModelForCausalLM

    from lmtune.config.schema import MethodSection
    from lmtune.methods.base import get_method
    from lmtune.models.families import IA3_TARGETS

    def base():
        return AutoModelForCausalLM.from_pretrained(family_model_dir(family))

    model_type = FAMILIES[family].model_type
    ia3 = get_method("ia3").prepare(base(), MethodSection(name="ia3"))
    scaled = {n.rsplit(".", 1)[-1] for n, m in ia3.named_modules() if hasattr(m, "ia3_l")}
    assert scaled == set(IA3_TARGETS[model_type][0])
    config = ia3.peft_config["default"]
    assert set(config.feedforward_modules) == set(IA3_TARGETS[model_type][1])
    dora = get_method("lora").prepare(base(), MethodSection(name="lora", r=4, use_dora=True))
    assert adapted_modules(dora) == set(LORA_TARGETS[model_type])
    assert any(hasattr(m, "lora_magnitude_vector") and len(m.lora_magnitude_vector) for m in dora.modules())
