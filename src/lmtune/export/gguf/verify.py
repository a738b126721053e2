"""Check an exported GGUF against the model it came from, through readers we did not write.

First in the runtime users load it in: llama.cpp (llamacpp.py, when llama-cpp-python is
installed): logits and greedy tokens on the same prompt ids, and its tokenizer. The report says
plainly when llama.cpp was not available and only transformers could check the file.

Then, for the architectures transformers' GGUF loader rebuilds exactly (arch.py:
transformers_readback; its own parser, de-quantizer, tensor-name map and llama q/k
un-permutation), the file is read back and compared with the source model:

- every weight equals the source weight rounded the way the file stores it, and the config
  rebuilt from the metadata matches (gguf_checks.py: exact, so a layout mistake cannot hide
  inside a quant's rounding);
- the tokenizer rebuilt from the file gives the same ids for the rendered prompts (and a probe with
  digits, accents, emoji and odd whitespace), and carries the same chat template;
- on a few chat prompts the logits differ by at most the quant's tolerance (max and mean |diff|):
  this measures what the rounding costs;
- greedy continuations are the same tokens (required for f32/f16; reported for bf16 and the block
  quants, whose rounding can legitimately flip a near-tie).

"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError
from lmtune.export.gguf import llamacpp
from lmtune.export.gguf.arch import architecture
from lmtune.export.gguf.checks import compare_config, compare_weights, file_tensor_types, type_counts
from lmtune.models.tokens import unique_ids

DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "What is 12 plus 30? Answer with the number.",
)
# A text that exercises the pre-tokenizer: digits, accents, emoji, runs of spaces, tabs, newlines.
TOKENIZER_PROBE = "Hello,  world!\tnaïve café 🤖 12345 x=3.14\n\n  indented   text"
GREEDY_TOKENS = 16
# Allowed |logit difference| per stored type: (max over all prompt positions, mean). Measured on
# SmolLM2-135M-Instruct (docs/export_gguf.md): f16 0.041 / 0.0058, bf16 0.28 / 0.038, q8_0 1.3 / 0.21,
# q4_0 25 / 3.4 (its source is itself dequantized Q4_1, so q4_0 rounds a second time). The limits
# leave 2-5x room. They bound what the rounding costs; mistakes in the file are caught exactly by
# the weight and config checks, since an un-permuted q/k already shows only mean 6.8 at f16.
QUANT_TOLERANCES: dict[str, dict[str, float]] = {
    "f32": {"max": 1e-3, "mean": 1e-4},
    "f16": {"max": 0.25, "mean": 0.03},
    "bf16": {"max": 1.0, "mean": 0.15},
    "q8_0": {"max": 4.0, "mean": 0.6},
    "q4_0": {"max": 50.0, "mean": 6.0},
    # k-quants (llama.cpp's quantizer): not measured against transformers on SmolLM2 yet, so set
    # at the block quant of the same or fewer bits; gguf/quality.py measures the real cost.
    "q6_k": {"max": 4.0, "mean": 0.6},
    "q5_k_m": {"max": 50.0, "mean": 6.0},
    "q4_k_m": {"max": 50.0, "mean": 6.0},
}
GREEDY_REQUIRED = {"f32", "f16"}


def verify_gguf(
    gguf_path: str | Path,
    model: Any,
    tokenizer: Any,
    *,
    quant: str,
    prompts: list[str] | None = None,
    llama_cpp: bool = True,
) -> dict[str, Any]:
    """Check `gguf_path` against `model` / `tokenizer`: in llama.cpp when installed (and
    `llama_cpp`), and by transformers' reader where it rebuilds the architecture.

    Returns a JSON-ready report: "passed" (True / False, or None when nothing could check the
    file), "checked_with" (the readers that ran), "llama_cpp" (its checks, or why it was
    skipped) and, when transformers read it back, that comparison's fields.
    """
    from lmtune.models.gguf_import import check_gguf_file

    path = check_gguf_file(gguf_path)
    if quant not in QUANT_TOLERANCES:
        raise ConfigError(f"Unknown GGUF quant '{quant}'. Choose one of: {', '.join(QUANT_TOLERANCES)}.")
    arch = architecture(model)
    texts = list(prompts or DEFAULT_PROMPTS)
    report: dict[str, Any] = {
        "file": str(path),
        "quant": quant,
        "file_bytes": path.stat().st_size,
        "tensor_types": type_counts(file_tensor_types(path)),
    }
    checked: list[str] = []
    verdicts: list[bool] = []
    if llama_cpp and llamacpp.available():
        report["llama_cpp"] = llamacpp.llama_cpp_checks(
            path,
            model,
            tokenizer,
            [chat_prompt_ids(tokenizer, text) for text in texts],
            stop=stop_ids(tokenizer, model),
            tolerance=QUANT_TOLERANCES[quant]["max"],
        )
        checked.append("llama.cpp")
        verdicts.append(report["llama_cpp"]["passed"])
    elif llama_cpp:
        report["llama_cpp"] = {"skipped": f"llama-cpp-python is not installed ({llamacpp.INSTALL_HINT})"}
    else:
        report["llama_cpp"] = {"skipped": "not requested"}
    if arch.transformers_readback and quant in GREEDY_REQUIRED | {"bf16", "q8_0", "q4_0"}:
        report.update(_transformers_readback(path, model, tokenizer, quant, texts))
        checked.append("transformers")
        verdicts.append(report["transformers_passed"])
    report["checked_with"] = checked
    report["passed"] = all(verdicts) if verdicts else None
    return report


def chat_prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The ids a chat prompt is run on: the template rendered, encoded without extra specials."""
    return _encode(tokenizer, _render(tokenizer, prompt))


def stop_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """Ids that end a reply: the generation config's eos ids and the tokenizer's eos."""
    generation = getattr(model, "generation_config", None) if model is not None else None
    return unique_ids(getattr(generation, "eos_token_id", None), tokenizer.eos_token_id)


def _transformers_readback(
    path: Path, model: Any, tokenizer: Any, quant: str, prompts: list[str]
) -> dict[str, Any]:
    """The file read back by transformers' GGUF loader and compared with the source (docstring)."""
    import torch
    from transformers import AutoTokenizer

    from lmtune.models.gguf_import import hf_progress_bars_off, load_dense_from_gguf

    tolerance = QUANT_TOLERANCES[quant]
    texts = [_render(tokenizer, prompt) for prompt in prompts]
    source_dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    with hf_progress_bars_off():
        read_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        read_model = load_dense_from_gguf(
            path,
            dtype=str(source_dtype).removeprefix("torch."),
            device_map=None if device.type == "cpu" else str(device),
        )
    read_model.eval()
    types = file_tensor_types(path)

    eos = unique_ids(getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id)
    per_prompt: list[dict[str, Any]] = []
    diffs: list[Any] = []
    same_top: list[Any] = []
    for text in texts:
        ids = _encode(tokenizer, text)
        source_logits, source_new = logits_and_greedy(model, ids, eos)
        read_logits, read_new = logits_and_greedy(read_model, ids, eos)
        diff = (source_logits - read_logits).abs()
        diffs.append(diff.flatten())
        same_top.append(source_logits.argmax(-1) == read_logits.argmax(-1))
        per_prompt.append(
            {
                "prompt_tokens": len(ids),
                "tokens_match": ids == _encode(read_tokenizer, text),
                "max_abs_logit_diff": float(diff.max()),
                "mean_abs_logit_diff": float(diff.mean()),
                "greedy_match": source_new == read_new,
                "greedy_source": tokenizer.decode(source_new, skip_special_tokens=True),
                "greedy_gguf": tokenizer.decode(read_new, skip_special_tokens=True),
            }
        )
    every = torch.cat(diffs)
    probe_match = _encode(tokenizer, TOKENIZER_PROBE) == _encode(read_tokenizer, TOKENIZER_PROBE)
    report: dict[str, Any] = {
        "reader": "transformers",
        "source_dtype": str(source_dtype).removeprefix("torch."),
        "max_abs_logit_diff": float(every.max()),
        "mean_abs_logit_diff": float(every.mean()),
        "top1_agreement": float(torch.cat(same_top).float().mean()),
        "tolerance": dict(tolerance),
        "tokenizer_match": probe_match and all(p["tokens_match"] for p in per_prompt),
        "chat_template_match": (read_tokenizer.chat_template or None) == _default_template(tokenizer),
        "greedy_match": all(p["greedy_match"] for p in per_prompt),
        "greedy_required": quant in GREEDY_REQUIRED,
        **compare_weights(types, model, read_model),
        **compare_config(model, read_model),
        "prompts": per_prompt,
    }
    report["transformers_passed"] = bool(
        report["weights_match"]
        and report["config_match"]
        and report["tokenizer_match"]
        and report["chat_template_match"]
        and report["max_abs_logit_diff"] <= tolerance["max"]
        and report["mean_abs_logit_diff"] <= tolerance["mean"]
        and (report["greedy_match"] or not report["greedy_required"])
    )
    del read_model
    return report


def _render(tokenizer: Any, prompt: str) -> str:
    """The prompt as the model sees it in chat: one user turn and the assistant's opening."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _default_template(tokenizer: Any) -> str | None:
    """The template a reader loads by default (of named templates, the one called "default")."""
    template = getattr(tokenizer, "chat_template", None)
    return template.get("default") if isinstance(template, dict) else (template or None)


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Ids as chat inference encodes a rendered prompt: the template already wrote any bos."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def logits_and_greedy(model: Any, ids: list[int], eos: list[int]) -> tuple[Any, list[int]]:
    """(float32 logits at every prompt position, on CPU; the first GREEDY_TOKENS greedy ids).

    One forward pass over the prompt serves both the comparison and the first generated token;
    the rest are decoded one at a time on the KV cache, stopping at an eos id. The same loop runs
    for both models, so no generation-config difference between them can make the answers differ.
    """
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(torch.tensor([ids], device=device), use_cache=True)
        logits = out.logits[0].float().cpu()
        token = int(logits[-1].argmax())
        new = [token]
        while token not in eos and len(new) < GREEDY_TOKENS:
            out = model(
                torch.tensor([[token]], device=device), past_key_values=out.past_key_values, use_cache=True
            )
            token = int(out.logits[0, -1].argmax())
            new.append(token)
    return logits, new
