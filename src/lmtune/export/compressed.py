"""`lmtune export RUN OUT --format gptq|awq`: a compressed-tensors folder made by llm-compressor.

AutoGPTQ and AutoAWQ are archived; llm-compressor is where both algorithms live now, and its
compressed-tensors checkpoints load in transformers (`from_pretrained`, no extra code) and in vLLM
(Marlin / Machete kernels). The scheme is weight-only: W4A16 by default (`bits`), symmetric integer
groups of `group_size` input columns, the output head left in full precision.

- GPTQ: `GPTQModifier` (Hessian-based error compensation, layer by layer, from the calibration
  activations).
- AWQ: llm-compressor's AWQ smoothing (`modifiers.transform.AWQModifier`: per-channel scales found by
  grid search on the calibration activations) followed by the same W4A16 quantization.

Both calibrate on chat-templated records (`export/records.py`). Symmetric groups for both: with
transformers 5.23 and compressed-tensors 0.19 an asymmetric (zero-point) checkpoint does not reload
(its packed zero points are refused as a size mismatch), measured 2026-12-04.

On a machine without an accelerator llm-compressor 0.14's AWQ pins its activation cache in page-
locked memory, which torch refuses without one ("Cannot access accelerator device"); `_awq_modifier`
subclasses the modifier (llm-compressor's extension point) to skip that pinning only then, since it
only speeds up host-to-GPU copies.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError

INSTALL_HINT = (
    "pip install 'lmtune[gptq]' (llm-compressor 0.14, compressed-tensors 0.19; in an environment with a newer "
    "transformers than llm-compressor allows, add --no-deps: pip install --no-deps llmcompressor==0.14.0.1 "
    "compressed-tensors==0.19.0 loguru)"
)
DEFAULT_CALIB_SAMPLES = 64
DEFAULT_MAX_SEQ = 512


def available() -> bool:
    return (
        importlib.util.find_spec("llmcompressor") is not None
        and importlib.util.find_spec("compressed_tensors") is not None
    )


def require(fmt: str) -> None:
    if not available():
        raise ConfigError(
            f"lmtune export --format {fmt} runs llm-compressor, which is not installed: {INSTALL_HINT}"
        )


def check_options(model: Any, *, bits: int, group_size: int) -> None:
    """Refuse a scheme the model cannot take, before any calibration: bits and group divisibility."""
    import torch

    if bits not in (4, 8):
        raise ConfigError(f"--bits {bits}: GPTQ/AWQ export writes 4 or 8-bit weights (W4A16, W8A16)")
    if group_size < 1:
        raise ConfigError(
            f"--group-size {group_size}: give a positive number of input columns per group, e.g. 128"
        )
    widths = {
        name: m.in_features
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")
    }
    bad = {n: w for n, w in widths.items() if w % group_size}
    if bad:
        common = math.gcd(*widths.values())
        fits = [g for g in (128, 64, 32, 16) if common % g == 0]
        name, width = next(iter(bad.items()))
        raise ConfigError(
            f"--group-size {group_size} does not divide the input width of {len(bad)} layers (e.g. {name}: "
            f"{width} columns); groups must tile each row exactly (vLLM's kernels need it too). "
            + (f"Use --group-size {fits[0]}." if fits else f"Use a --group-size dividing {common}.")
        )


def calibration_dataset(tokenizer: Any, items: list[Any], samples: int, max_seq: int) -> Any:
    """The first `samples` records, chat template applied, as a tokenized `datasets.Dataset`."""
    from datasets import Dataset

    ids: list[list[int]] = []
    for item in items[:samples]:
        text = tokenizer.apply_chat_template(item.messages, tokenize=False)
        row = list(tokenizer(text, add_special_tokens=False)["input_ids"])[:max_seq]
        if row:
            ids.append(row)
    if not ids:
        raise ConfigError("no calibration record produced any tokens; check --calib or the run's data")
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]})


def _scheme(bits: int, group_size: int) -> dict[str, Any]:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(
        num_bits=bits, type="int", symmetric=True, strategy="group", group_size=group_size
    )
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}


def _awq_modifier() -> Any:
    """llm-compressor's AWQ smoothing; without an accelerator, one that does not pin memory (docstring)."""
    import torch
    from llmcompressor.modifiers.transform import AWQModifier
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        return AWQModifier()

    class _UnpinnedCache(IntermediatesCache):
        def pin_memory(self, batch_index: int, input_names: list[str] | None = None) -> None:
            return None

    class CpuAWQModifier(AWQModifier):
        def _apply_smoothing(self, model: Any) -> Any:
            for cache in self._parent_args_cache.values():
                cache.__class__ = _UnpinnedCache
            return super()._apply_smoothing(model)

    return CpuAWQModifier()


def recipe(fmt: str, bits: int, group_size: int) -> list[Any]:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    groups = _scheme(bits, group_size)
    if fmt == "gptq":
        return [GPTQModifier(config_groups=groups, ignore=["lm_head"])]
    return [_awq_modifier(), QuantizationModifier(config_groups=groups, ignore=["lm_head"])]


def quantize_folder(
    source: Path,
    out_dir: Path,
    tokenizer: Any,
    *,
    fmt: str,
    bits: int,
    group_size: int,
    dataset: Any,
    max_seq: int,
) -> Any:
    """Calibrate and quantize the model saved in `source`; write the compressed folder; return the
    in-memory quantized model."""
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto").eval()
    oneshot(
        model=model,
        tokenizer=tokenizer,
        dataset=dataset,
        recipe=recipe(fmt, bits, group_size),
        num_calibration_samples=len(dataset),
        max_seq_length=max_seq,
        shuffle_calibration_samples=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, save_compressed=True)
    tokenizer.save_pretrained(out_dir)
    return model


def export_compressed(
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    *,
    fmt: str,
    records: Any,
    bits: int = 4,
    group_size: int = 128,
    calib_samples: int = DEFAULT_CALIB_SAMPLES,
    max_seq: int = DEFAULT_MAX_SEQ,
    say: Any = print,
) -> dict[str, Any]:
    """GPTQ/AWQ-quantize `model` into `out_dir`, reload it with transformers and measure both."""
    from transformers import AutoModelForCausalLM

    from lmtune.export import quality

    require(fmt)
    check_options(model, bits=bits, group_size=group_size)
    dataset = calibration_dataset(tokenizer, records.calib, calib_samples, max_seq)
    say(f"{fmt.upper()} W{bits}A16, groups of {group_size}: calibrating on {len(dataset)} records from "
        f"{records.calib_source}, chat template applied ...")  # fmt: skip
    staging = out_dir.parent / f".{out_dir.name}.unquantized"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)  # llm-compressor reads the config of what it quantizes from disk
        tokenizer.save_pretrained(staging)
        quantize_folder(
            staging,
            out_dir,
            tokenizer,
            fmt=fmt,
            bits=bits,
            group_size=group_size,
            dataset=dataset,
            max_seq=max_seq,
        )
        reloaded = AutoModelForCausalLM.from_pretrained(out_dir, device_map="cpu").eval()
        say(
            f"Measuring {fmt} against the unquantized model on {records.held_out_source or 'no held-out records'} ..."
        )
        report: dict[str, Any] = {
            "format": fmt,
            "library": "llm-compressor",
            "scheme": f"W{bits}A16: symmetric int{bits} weights in groups of {group_size}, lm_head unquantized",
            "calibration": {
                "records": len(dataset),
                "source": records.calib_source,
                "max_seq_length": max_seq,
            },
            "held_out": records.held_out_source,
            "unquantized": quality.measure_hf(model, tokenizer, staging, records.held_out),
            "quantized": quality.measure_hf(reloaded, tokenizer, out_dir, records.held_out),
        }
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.update(quality.compare(report["unquantized"], report["quantized"]))
    return report


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    """quantization.json and a README (the measured table, how to load and serve it)."""
    from lmtune.export import quality

    (out_dir / "quantization.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    name = out_dir.name
    lines = [
        f"# {report['format'].upper()} {report['scheme'].split(':')[0]} model (llm-compressor, compressed-tensors)",
        "",
        f"{report['scheme']}. Calibrated on {report['calibration']['records']} records from "
        f"{report['calibration']['source']}, chat template applied.",
        "",
        "## Load it",
        "",
        "transformers (compressed-tensors installed; the packed weights are unpacked as it computes):",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
        "```",
        "",
        "## Serve it with vLLM",
        "",
        "vLLM reads the quantization from config.json (`quant_method: compressed-tensors`) and runs the",
        "int4/int8 weights with its mixed-precision kernels (Marlin/Machete; an NVIDIA GPU):",
        "",
        "```bash",
        f"vllm serve ./{name} --served-model-name {name}",
        "# OpenAI-compatible API on http://localhost:8000/v1",
        "```",
        "",
        'or in Python: `from vllm import LLM; LLM(model="./' + name + '").chat(...)`.',
        "",
        "## Measured against the unquantized model",
        "",
        f"Held-out records: {report.get('held_out') or 'none'}.",
        "",
        *quality.markdown_table(report, original="unquantized (float32)", quantized=report["format"]),
        "",
    ]
    (out_dir / "README.md").write_text("\n".join(lines), encoding="utf-8")
