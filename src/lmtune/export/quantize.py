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
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError
from lmtune.export.quality import (
    DEFAULT_MAX_PPL_INCREASE,
    check_limit,
    compare,
    gate_folder,
    markdown_table,
    measure_hf,
)

SCHEMES = {
    "int8": ("torchao", "Int8WeightOnly: int8 weights, one scale per output row"),
    "int4": ("bitsandbytes", "NF4 in blocks of 64, float32 compute"),
}


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
    held_out_source: str = "",
    max_ppl_increase: float = DEFAULT_MAX_PPL_INCREASE,
    force: bool = False,
    say: Any = print,
) -> dict[str, Any]:
    """Quantize `model` (float32, merged) into `out_dir` and measure it (export/quality.py); returns
    the report. Fails (folder removed) when perplexity rises past `max_ppl_increase`, unless `force`."""
    from transformers import AutoModelForCausalLM

    if fmt not in SCHEMES:
        raise ConfigError(f"--format {fmt!r}: the quantized formats are {', '.join(SCHEMES)}")
    check_limit(max_ppl_increase)
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
        library, scheme = SCHEMES[fmt]
        report = {
            "format": fmt,
            "library": library,
            "scheme": scheme,
            "held_out": held_out_source,
            "unquantized": measure_hf(model, tokenizer, staging, items),
            "quantized": measure_hf(reloaded, tokenizer, out_dir, items),
        }
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.update(compare(report["unquantized"], report["quantized"]))
    report["forced"] = gate_folder(out_dir, report, max_ppl_increase, force=force)
    (out_dir / "quantization.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out_dir / "README.md").write_text(report_markdown(report), encoding="utf-8")
    return report


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
    lines = [
        f"# {r['format']} weight-only quantized model ({r['library']}: {r['scheme']})",
        "",
        f"Load it like any model ({r['library']} installed): `AutoModelForCausalLM.from_pretrained(folder)`.",
        "",
        f"Held-out records: {r.get('held_out') or 'none'}.",
        "",
        *markdown_table(r, original="unquantized (float32)", quantized=r["format"]),
        "",
    ]
    return "\n".join(lines)
