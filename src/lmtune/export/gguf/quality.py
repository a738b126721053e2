"""What a quantized GGUF costs, measured where it runs: in llama.cpp, against an f16 file of the same model.

The numbers are export/quality.py's (size, perplexity on held-out answers, greedy agreement on the
fixed prompt set, tokens/s), but both sides are llama.cpp: the f16 GGUF (written by our writer into a
temporary file, and removed) is the "original", so the comparison isolates the quantization and not
a runtime difference. Perplexity uses llama.cpp's logits at every position (`logits_all`) on the
token ids and answer masks training uses (`tokenize_conversations`), so it is comparable with the
transformers figure for the same records.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError


def gguf_nll(
    llm: Any, tokenizer: Any, items: list[Any], max_length: int = 1024
) -> list[tuple[float, int] | None]:
    """(summed NLL, answer tokens) per item from llama.cpp's logits, like eval/loss.conversation_nll."""
    import numpy as np

    from lmtune.tokenize.masking import IGNORE, MaskingError, tokenize_conversations

    samples = tokenize_conversations(
        tokenizer, [(it.messages, it.tools) for it in items], max_length=max_length, train_on="all"
    )
    out: list[tuple[float, int] | None] = []
    for s in samples:
        if isinstance(s, MaskingError) or len(s.input_ids) < 2:
            out.append(None)
            continue
        llm.reset()
        llm.eval(s.input_ids)
        logits = np.array(llm.scores[: len(s.input_ids) - 1], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        logz = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
        targets = np.array(s.labels[1:])
        keep = targets != IGNORE
        rows = np.nonzero(keep)[0]
        nll = float((logz[rows] - logits[rows, targets[rows]]).sum())
        out.append((nll, int(keep.sum())))
    return out


def measure_file(path: Path, tokenizer: Any, items: list[Any] | None) -> dict[str, Any]:
    """Size, perplexity on `items`, greedy ids on the fixed prompts and tokens/s of one GGUF in llama.cpp."""
    from lmtune.eval.loss import corpus_loss
    from lmtune.export.gguf.llamacpp import cpp_logits_and_greedy, open_llama
    from lmtune.export.gguf.verify import stop_ids
    from lmtune.export.quality import GREEDY_TOKENS, prompt_ids

    prompts = prompt_ids(tokenizer)
    longest = max(len(p) for p in prompts) + GREEDY_TOKENS + 8
    if items:
        from lmtune.tokenize.masking import MaskingError, tokenize_conversations

        lengths = [
            len(s.input_ids)
            for s in tokenize_conversations(
                tokenizer, [(it.messages, it.tools) for it in items], max_length=1024
            )
            if not isinstance(s, MaskingError)
        ]
        longest = max([longest, *lengths])
    llm = open_llama(path, max(128, longest))
    try:
        out: dict[str, Any] = {"size_bytes": path.stat().st_size}
        if items:
            out.update(corpus_loss(gguf_nll(llm, tokenizer, items)))
        greedy, seconds = [], 0.0
        for ids in prompts:
            start = time.perf_counter()
            _, new = cpp_logits_and_greedy(llm, ids, GREEDY_TOKENS, stop_ids(tokenizer))
            seconds += time.perf_counter() - start
            greedy.append(new)
    finally:
        llm.close()
    out["tokens_per_second"] = sum(len(g) for g in greedy) / seconds if seconds else 0.0
    out["greedy"] = greedy
    return out


def measure_gguf(
    path: Path, model: Any, tokenizer: Any, *, quant: str, items: list[Any] | None, name: str | None = None
) -> dict[str, Any]:
    """Measure the quantized file `path` against an f16 GGUF of `model`, both in llama.cpp; the report
    is also written beside it as <path>.quant.json."""
    from lmtune.export.gguf.checks import file_tensor_types, type_counts
    from lmtune.export.gguf.llamacpp import INSTALL_HINT, available
    from lmtune.export.gguf.writer import export_gguf
    from lmtune.export.quality import compare

    if not available():
        raise ConfigError(
            f"measuring a {quant} GGUF runs it in llama.cpp, which is not installed: {INSTALL_HINT}"
        )
    f16 = path.with_name(f".{path.stem}.reference-f16-{os.getpid()}.gguf")
    try:
        export_gguf(model, tokenizer, f16, quant="f16", name=name, notes=[])
        report: dict[str, Any] = {
            "format": f"gguf {quant}",
            "file": str(path),
            "quant": quant,
            "runtime": "llama.cpp (llama-cpp-python)",
            "tensor_types": type_counts(file_tensor_types(path)),
            "unquantized": measure_file(f16, tokenizer, items),
            "quantized": measure_file(path, tokenizer, items),
        }
    finally:
        if f16.exists():
            f16.unlink()
    report["reference"] = "f16 GGUF of the same model, in llama.cpp"
    report.update(compare(report["unquantized"], report["quantized"]))
    if report["unquantized"].get("perplexity") is not None and not math.isfinite(
        report["quantized"]["perplexity"]
    ):
        report["ppl_increase"] = math.inf
    report["note"] = (
        "unquantized = the f16 GGUF; greedy agreement: share of its 32 greedy tokens reproduced before the "
        "first difference, averaged over the prompts; tokens/s: prompt + decode in llama.cpp on this machine."
    )
    return report


def write_report(path: Path, report: dict[str, Any]) -> Path:
    out = path.with_suffix(".quant.json")
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return out
