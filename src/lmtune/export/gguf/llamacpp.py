"""The GGUF run where users run it: llama.cpp (through llama-cpp-python), and its k-quant quantizer.

`llama_cpp_checks` loads the file in llama.cpp and compares it with the transformers model on the
*same token ids* (so a tokenizer difference cannot hide or fake a model difference):

- logits at every prompt position, max |diff| within the quant's tolerance;
- greedy continuation: identical token by token, except that a flip at a near tie is allowed (the
  agreement rule): at the first position where the two differ, transformers' own logit for
  llama.cpp's token must be within the quant's max-logit tolerance of its top logit. After a
  legitimate flip the two continue from different text, so nothing later is compared. For f16 and
  f32 the tolerance is so small that only true ties can flip;
- llama.cpp's tokenizer against the transformers tokenizer on a mixed English / Chinese / emoji text.

`export_k_quant` writes an f16 GGUF with our writer, then runs llama.cpp's own quantizer
(`llama_model_quantize`) on it. `lmtune.export.gguf.quality` measures every quantized GGUF against
an f16 file in llama.cpp.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError

# A mixed text for the tokenizer check: English, Chinese, emoji, digits, odd whitespace.
MIXED_TEXT = "Hello world! 你好，世界。今天天气很好 🤖🎉 naïve café, x=3.14\n\n  indented\ttext 12345"
GREEDY_STEPS = 16
_K_QUANT_FTYPES = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}
INSTALL_HINT = "pip install 'lmtune[llamacpp]' (llama-cpp-python >= 0.3.36)"


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def _threads() -> int:
    return max(1, min(4, int(os.environ.get("OMP_NUM_THREADS", 0) or (os.cpu_count() or 1))))


def open_llama(path: Path, n_ctx: int = 512) -> Any:
    """The file loaded in llama.cpp with logits kept for every position (an n_ctx x vocab array,
    so n_ctx is kept to what the check needs); a clear error if it fails."""
    from llama_cpp import Llama

    try:
        return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=_threads())
    except Exception as err:  # llama.cpp reports a load failure as a ValueError without the reason
        raise ConfigError(f"llama.cpp could not load {path}: {err}") from err


def cpp_logits_and_greedy(llm: Any, ids: list[int], steps: int, stop: list[int]) -> tuple[Any, list[int]]:
    """(float32 logits at each prompt position, greedy ids) from llama.cpp, argmax by hand so no
    sampler setting can change the choice."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    new: list[int] = []
    while len(new) < steps:
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        new.append(token)
        if token in stop:
            break
        llm.eval([token])
    return logits, new


def hf_logits_and_steps(
    model: Any, ids: list[int], steps: int, stop: list[int]
) -> tuple[Any, list[int], list[Any]]:
    """(prompt logits, greedy ids, the logits row each greedy id was chosen from) in transformers."""
    import torch

    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        logits = out.logits[0].float().numpy()
        rows = [logits[-1]]
        new: list[int] = []
        while True:
            token = int(rows[-1].argmax())
            new.append(token)
            if token in stop or len(new) >= steps:
                break
            out = model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
            rows.append(out.logits[0, -1].float().numpy())
    return logits, new, rows


def greedy_agreement(
    source: list[int], rows: list[Any], other: list[int], tolerance: float
) -> dict[str, Any]:
    """The agreement rule (module docstring): equal until the first difference, which must be a
    near tie in the source's own logits (within `tolerance`)."""
    same = 0
    for a, b in zip(source, other):
        if a != b:
            break
        same += 1
    if same >= min(len(source), len(other)):
        return {
            "identical": len(source) == len(other),
            "agrees": len(source) == len(other),
            "same_prefix": same,
        }
    gap = float(rows[same][source[same]] - rows[same][other[same]])
    return {"identical": False, "agrees": gap <= tolerance, "same_prefix": same, "flip_logit_gap": gap}


def llama_cpp_checks(
    path: Path, model: Any, tokenizer: Any, prompt_ids: list[list[int]], *, stop: list[int], tolerance: float
) -> dict[str, Any]:
    """Run `path` in llama.cpp against `model` on `prompt_ids` (see the module docstring)."""
    llm = open_llama(path, _context(prompt_ids, GREEDY_STEPS))
    rows_out: list[dict[str, Any]] = []
    worst = 0.0
    for ids in prompt_ids:
        hf_logits, hf_new, hf_rows = hf_logits_and_steps(model, ids, GREEDY_STEPS, stop)
        cpp_logits, cpp_new = cpp_logits_and_greedy(llm, ids, GREEDY_STEPS, stop)
        diff = float(abs(hf_logits - cpp_logits).max())
        worst = max(worst, diff)
        rows_out.append(
            {
                "prompt_tokens": len(ids),
                "max_abs_logit_diff": diff,
                "greedy_transformers": hf_new,
                "greedy_llama_cpp": cpp_new,
                **greedy_agreement(hf_new, hf_rows, cpp_new, tolerance),
            }
        )
    tokens = tokenizer_check(llm, tokenizer)
    llm.close()
    report = {
        "loaded": True,
        "max_abs_logit_diff": worst,
        "logit_tolerance": tolerance,
        "greedy_identical": all(row["identical"] for row in rows_out),
        "greedy_agrees": all(row["agrees"] for row in rows_out),
        **tokens,
        "prompts": rows_out,
    }
    report["passed"] = bool(worst <= tolerance and report["greedy_agrees"] and tokens["tokenizer_match"])
    return report


def _context(prompt_ids: list[list[int]], steps: int) -> int:
    """A context just long enough for the longest prompt plus its greedy tokens (and the probe)."""
    return max(128, max(len(ids) for ids in prompt_ids) + steps + 8)


def tokenizer_check(llm: Any, tokenizer: Any, text: str = MIXED_TEXT) -> dict[str, Any]:
    """llama.cpp's tokenizer against transformers' on `text` (no special tokens added by either)."""
    hf = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    cpp = list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))
    return {"tokenizer_match": hf == cpp, "tokenizer_text": text, "tokens_hf": hf, "tokens_llama_cpp": cpp}


def export_k_quant(
    model: Any, tokenizer: Any, out_path: str | Path, *, quant: str, name: str | None, notes: list[str] | None
) -> Path:
    """Write `quant` (q4_k_m | q5_k_m | q6_k) by llama.cpp's quantizer from an f16 file we write
    (and remove). What it costs is measured by gguf/quality.py, for every GGUF quant alike."""
    from lmtune.export.gguf.writer import export_gguf

    if not available():
        raise ConfigError(
            f"GGUF k-quants ({quant}) are made by llama.cpp's own quantizer; install it: {INSTALL_HINT}."
        )
    import llama_cpp

    out = Path(out_path).expanduser()
    if out.suffix.lower() != ".gguf":
        raise ConfigError(f"The output file {out} should end in .gguf, so llama.cpp and Ollama recognise it.")
    f16 = out.with_name(f".{out.stem}.f16-{os.getpid()}.gguf")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}-{time.monotonic_ns()}")
    try:
        export_gguf(model, tokenizer, f16, quant="f16", name=name, notes=notes)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, _K_QUANT_FTYPES[quant])
        params.nthread = _threads()
        code = llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), params)
        if code != 0 or not tmp.exists():
            raise ConfigError(f"llama.cpp's quantizer failed ({quant}, code {code}) on {f16}.")
        os.replace(tmp, out)
    finally:
        for leftover in (f16, tmp):
            if leftover.exists():
                leftover.unlink()
    return out
