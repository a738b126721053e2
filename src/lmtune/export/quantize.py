"""`lmtune export TARGET --format int8|int4 OUT_DIR`: a weight-only quantized Hugging Face folder, with
what it costs measured against the unquantized model.

The library for each format was chosen by measurement (docs/export.md: SmolLM2-135M + LoRA merged,
CPU, 2026-12-01): int8 is torchao's Int8WeightOnly (answer perplexity equal to float32's, faster
generation and more identical greedy answers than bitsandbytes' LLM.int8); int4 is bitsandbytes NF4
(torchao's int4 needs kernels that do not exist on CPU, optimum-quanto folders cannot be saved).
Both folders reload with a plain `from_pretrained` (the quantization config is in config.json) to
bit-identical logits, which is checked after writing. The report (quantization.json, and the table
in README.md) gives file size, perplexity on held-out records, greedy agreement and generation speed,
quantized vs unquantized.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError

SCHEMES = {
    "int8": ("torchao", "Int8WeightOnly: int8 weights, one scale per output row"),
    "int4": ("bitsandbytes", "NF4 in blocks of 64, float32 compute"),
}
SPEED_PROMPTS = ("Who are you?", "Write two sentences about the sea.", "What is 12 times 3?")


def quantization_config(fmt: str) -> Any:
    """transformers' quantization config for `fmt`, or a ConfigError naming the package to install."""
    import torch

    if fmt == "int8":
        try:
            from torchao.quantization import Int8WeightOnlyConfig
        except ImportError:
            raise ConfigError(
                "lmtune export --format int8 needs torchao: pip install 'lmtune[quant]'"
            ) from None
        from transformers import TorchAoConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    from transformers import BitsAndBytesConfig

    from lmtune.train.optim import require_bitsandbytes

    require_bitsandbytes("lmtune export --format int4")
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )


def export_quantized(
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    *,
    fmt: str,
    items: list[Any] | None = None,
    max_new_tokens: int = 32,
    say: Any = print,
) -> dict[str, Any]:
    """Quantize `model` (float32, merged) into `out_dir` and measure it; returns the report."""
    from transformers import AutoModelForCausalLM

    if fmt not in SCHEMES:
        raise ConfigError(f"--format {fmt!r}: the quantized formats are {', '.join(SCHEMES)}")
    config = quantization_config(fmt)
    staging = out_dir.parent / f".{out_dir.name}.unquantized"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)  # both libraries quantize while loading a folder
        quantized = AutoModelForCausalLM.from_pretrained(
            staging, quantization_config=config, device_map="cpu"
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        quantized.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        reloaded = AutoModelForCausalLM.from_pretrained(out_dir, device_map="cpu")
        _check_reload(quantized, reloaded, tokenizer, out_dir)
        say(f"Measuring {fmt} against the unquantized model ...")
        report = {
            "format": fmt,
            "library": "bitsandbytes",
            "scheme": "LLM.int8 (absmax per row, outliers in fp16)"
            if fmt == "int8"
            else "NF4, float32 compute",
            "unquantized": measure(model, tokenizer, staging, items, max_new_tokens),
            "quantized": measure(reloaded, tokenizer, out_dir, items, max_new_tokens),
        }
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    u, q = report["unquantized"], report["quantized"]
    report["size_ratio"] = q["size_bytes"] / u["size_bytes"]
    report["greedy_identical"] = [a == b for a, b in zip(u.pop("answers"), q.pop("answers"))]
    (out_dir / "quantization.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / "README.md").write_text(report_markdown(report), encoding="utf-8")
    return report


def measure(model: Any, tokenizer: Any, folder: Path, items: list[Any] | None, max_new_tokens: int) -> dict:
    """Size of the weight files, perplexity on `items` (answer tokens), greedy answers and tokens/s."""
    from lmtune.eval.loss import conversation_nll, corpus_loss
    from lmtune.infer.generate import GenerationOptions, generate_with_counts

    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    out: dict[str, Any] = {"size_bytes": size}
    if items:
        out.update(corpus_loss(conversation_nll(model, tokenizer, items)))
    if getattr(tokenizer, "chat_template", None):
        convs = [[{"role": "user", "content": p}] for p in SPEED_PROMPTS]
        options = GenerationOptions(max_new_tokens=max_new_tokens)
        start = time.perf_counter()
        replies = generate_with_counts(model, tokenizer, convs, options, batch_size=1)
        seconds = time.perf_counter() - start
        out["tokens_per_second"] = sum(n for _, n in replies) / seconds
        out["answers"] = [text for text, _ in replies]
    else:
        out["answers"] = []
    return out


def _check_reload(quantized: Any, reloaded: Any, tokenizer: Any, out_dir: Path) -> None:
    import torch

    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        diff = float((quantized(input_ids=ids).logits - reloaded(input_ids=ids).logits).abs().max())
    if diff > 0:
        raise ConfigError(
            f"the folder written to {out_dir} does not reload to the quantized model (max |logit difference| "
            f"{diff:.3g}); please report this with your bitsandbytes version"
        )


def report_markdown(r: dict[str, Any]) -> str:
    u, q = r["unquantized"], r["quantized"]

    def fmt(x: Any, digits: int = 3) -> str:
        return "-" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))

    rows = [
        ("weights on disk (MiB)", fmt(u["size_bytes"] / 2**20, 1), fmt(q["size_bytes"] / 2**20, 1)),
        ("perplexity (held-out answers)", fmt(u.get("perplexity")), fmt(q.get("perplexity"))),
        (
            "generation tokens/s (CPU, batch 1)",
            fmt(u.get("tokens_per_second"), 1),
            fmt(q.get("tokens_per_second"), 1),
        ),
    ]
    same = sum(r["greedy_identical"])
    lines = [
        f"# {r['format']} weight-only quantized model ({r['library']}: {r['scheme']})",
        "",
        f"Load it like any model ({r['library']} installed): `AutoModelForCausalLM.from_pretrained(folder)`.",
        "",
        "| | unquantized (float32) | " + r["format"] + " |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"Greedy answers identical to the unquantized model on {same} of {len(r['greedy_identical'])} prompts.",
        "",
    ]
    return "\n".join(lines)
