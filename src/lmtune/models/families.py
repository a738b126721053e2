"""Model families as data: one table per concern, each row checked with a tiny model of that family.

Which modules LoRA adapts, which IA3 scales, what the chat template cannot express and what has been
verified depend on the architecture (transformers' `model_type`) or on the released instruct model
(the family), not on code paths: adding a family is adding rows here and a tiny model to
tests/families.py, never an `if model_type == ...` elsewhere. tests/models/test_families.py trains,
chats, merges and exports each family; docs/models.md carries the same table (a test keeps the two
equal). This module imports nothing heavy: `lmtune models list` reads it without torch.

MoE experts are excluded from the LoRA defaults on purpose. transformers 5 stores a layer's experts
as two fused 3-D parameters (experts.gate_up_proj [experts, 2*inter, hidden], experts.down_proj
[experts, hidden, inter]), not nn.Linear modules, so a module name cannot reach them; PEFT can only
target them as parameters (`target_parameters`), whose merge and exports lmtune does not verify. The
router (`mlp.gate`, a TopKRouter) is never a default target either: adapting it changes which experts
see which token, which a small SFT run should not do unless asked. So an MoE model gets LoRA on its
attention projections. (PEFT 0.21 does wrap the fused experts when they are named, or under
all-linear, as `lora.ParamWrapper`, which requires lora_dropout 0; a user who wants them lists them.)
"""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
GATED_MLP = ("gate_proj", "up_proj", "down_proj")

# LoRA / QLoRA / DoRA defaults by transformers model_type: every attention and MLP projection by its
# real module name; never the output head, never an MoE router; MoE experts excluded (see above).
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ATTENTION + GATED_MLP,
    "mistral": ATTENTION + GATED_MLP,
    "qwen2": ATTENTION + GATED_MLP,
    "qwen3": ATTENTION + GATED_MLP,
    "gemma2": ATTENTION + GATED_MLP,
    "gemma3_text": ATTENTION + GATED_MLP,
    "smollm3": ATTENTION + GATED_MLP,
    "granite": ATTENTION + GATED_MLP,
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),  # fused q|k|v and gate|up
    # MoE: attention only. Naming gate_up_proj/down_proj (or all-linear) makes PEFT 0.21 wrap the fused
    # experts' 3-D parameters (lora.ParamWrapper, which refuses lora_dropout); the router is `gate`.
    "qwen3_moe": ATTENTION,
    "mixtral": ATTENTION,
}

# IA3 defaults by model_type: (scaled modules, the feed-forward ones among them, whose *input* IA3 scales).
# PEFT's own table names Mixtral's pre-transformers-5 expert layers (w2) and has no row for Phi-3 or
# Qwen3-MoE, so lmtune keeps its own: keys, values and the MLP's down projection where there is one.
IA3_TARGETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    **{
        t: (("k_proj", "v_proj", "down_proj"), ("down_proj",))
        for t in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "smollm3", "granite")
    },
    "phi3": (("qkv_proj", "down_proj"), ("down_proj",)),
    "qwen3_moe": (("k_proj", "v_proj"), ()),
    "mixtral": (("k_proj", "v_proj"), ()),
}

# Verification states in the support table (docs/models.md explains each).
YES, NO, REFUSED, UNTESTED = "yes", "no", "refused", "untested"


@dataclass(frozen=True)
class Family:
    """One family a user brings: its architecture (model_type) and its instruct model's template."""

    name: str  # the id tests/families.py builds a tiny model under
    display: str
    model_type: str  # transformers model_type of the released checkpoints
    example: str  # a released instruct checkpoint the template comes from
    moe: bool = False


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("qwen2", "Qwen2 / Qwen2.5", "qwen2", "Qwen/Qwen2.5-7B-Instruct"),
        Family("qwen3", "Qwen3", "qwen3", "Qwen/Qwen3-0.6B"),
        Family("qwen3_moe", "Qwen3 MoE", "qwen3_moe", "Qwen/Qwen3-30B-A3B", moe=True),
        Family("llama3", "Llama 3.x", "llama", "meta-llama/Llama-3.1-8B-Instruct"),
        Family("mistral", "Mistral", "mistral", "mistralai/Mistral-Nemo-Instruct-2407"),
        Family("mixtral", "Mixtral", "mixtral", "mistralai/Mixtral-8x7B-Instruct-v0.1", moe=True),
        Family("gemma2", "Gemma 2", "gemma2", "google/gemma-2-2b-it"),
        Family("gemma3", "Gemma 3 (text)", "gemma3_text", "google/gemma-3-1b-it"),
        Family("phi3", "Phi-3 / Phi-3.5", "phi3", "microsoft/Phi-3.5-mini-instruct"),
        Family("deepseek", "DeepSeek-R1-Distill-Llama", "llama", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"),
        Family("smollm2", "SmolLM2 (bundled)", "llama", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        Family("smollm3", "SmolLM3", "smollm3", "HuggingFaceTB/SmolLM3-3B"),
        Family("granite", "Granite 3.x", "granite", "ibm-granite/granite-3.3-2b-instruct"),
    )
}

# What the family's chat template cannot express or does unusually (facts; masking acts on them).
TEMPLATE_QUIRKS: dict[str, tuple[str, ...]] = {
    "qwen2": ("adds a default system turn when there is none",),
    "qwen3": (
        "drops <think> reasoning from earlier assistant turns",
        "the generation prompt may open an empty <think></think> block (enable_thinking=False)",
    ),
    "qwen3_moe": ("as Qwen3",),
    "llama3": ("adds a dated system header (Cutting Knowledge / Today Date) to every prompt",),
    "mistral": (
        "no system role of its own: the system text is put in the last user turn",
        "roles must alternate user/assistant",
    ),
    "mixtral": ("as Mistral",),
    "gemma2": ("no system role: the template raises on one", "the assistant role is called model"),
    "gemma3": ("as Gemma 2 (the Gemma 3 template folds a system turn into the first user turn)",),
    "phi3": ("a system turn renders as <|system|>, which Phi-3.5 was not trained with",),
    "deepseek": (
        "drops the reasoning before </think> from earlier assistant turns",
        "the generation prompt opens <think>",
    ),
    "smollm2": ("adds a default system turn when there is none",),
    "smollm3": ("always renders a long metadata system turn (reasoning mode, date)",),
    "granite": ("adds a dated default system turn when there is none",),
}

# Per family: train (LoRA + QLoRA SFT, loss falls), chat (lmtune's generate = the model's own greedy
# generate), merge (merge parity), gguf (the GGUF export loads and answers in real llama.cpp), onnx
# (onnxruntime = torch). masking is per template and lives with tokenize/masking.py's tests.
COLUMNS = ("train", "chat", "masking", "merge", "gguf", "onnx")
# Where the values come from: train / chat / merge / onnx: tests/models/test_families.py (and for SmolLM2
# tests/methods, tests/export, tests/infer). masking: tests/tokenize/test_family_masking.py (multi-turn
# records with a system turn, a weight-0 answer, Chinese text and reasoning, against an independent
# re-rendering). gguf: tests/export/test_gguf_families.py runs each exported file in real llama.cpp.
VERIFIED: dict[str, dict[str, str]] = {
    "qwen2": dict(train=YES, chat=YES, masking=YES, merge=YES, gguf=YES, onnx=YES),
    "qwen3": dict(train=YES, chat=YES, masking=YES, merge=YES, gguf=YES, onnx=YES),
    "qwen3_moe": dict(train=YES, chat=YES, masking=YES, merge=YES, gguf=YES, onnx=REFUSED),
    "llama3": dict(train=YES, chat=YES, masking=YES, merge=YES, gguf=YES, onnx=YES),
    "mistral": dict(train=YES, chat=YES, masking=YES, merge=YES, gguf=YES, onnx=YES),
    "mixtral": dict(train=YES, chat=YES, masking=YES, merge=YES, gguf=YES, onnx=REFUSED),
    "gemma2": dict(train=YES, chat=YES, masking=YES, merge=YES, gguf=YES, onnx=YES),
    "gemma3": dict(train=YES, chat=YES, masking=YES, merge=YES, gguf=YES, onnx=YES),
    "phi3": dict(train=YES, chat=YES, masking=YES, merge=YES, gguf=YES, onnx=YES),
    "deepseek": dict(train=YES, chat=YES, masking=YES, merge=YES, gguf=YES, onnx=YES),
    "smollm2": dict(train=YES, chat=YES, masking=YES, merge=YES, gguf=YES, onnx=YES),
    "smollm3": dict(train=UNTESTED, chat=UNTESTED, masking=YES, merge=UNTESTED, gguf=NO, onnx=UNTESTED),
    "granite": dict(train=UNTESTED, chat=UNTESTED, masking=YES, merge=UNTESTED, gguf=NO, onnx=UNTESTED),
}


def lora_targets(model_type: str | None) -> list[str] | str:
    """LoRA's default target_modules for a model_type: its row, or PEFT's all-linear for one without."""
    row = LORA_TARGETS.get(model_type or "")
    return list(row) if row else "all-linear"


def ia3_targets(model_type: str | None) -> tuple[list[str], list[str]] | None:
    """IA3's default (target_modules, feedforward_modules), or None to let PEFT choose."""
    row = IA3_TARGETS.get(model_type or "")
    return (list(row[0]), list(row[1])) if row else None


def support_rows() -> list[list[str]]:
    """The support table, one row per family: display name, model_type, then COLUMNS."""
    return [[f.display, f.model_type, *(VERIFIED[name][c] for c in COLUMNS)] for name, f in FAMILIES.items()]


def support_markdown() -> str:
    """The support table as Markdown (docs/models.md carries exactly this text)."""
    header = ["family", "model_type", *COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in support_rows()]
    return "\n".join(lines) + "\n"
