"""What a quantized export costs, measured the same way for every format, against the unquantized model.

Every quantized export (int8/int4 folders, GPTQ/AWQ folders, GGUF quants) reports four numbers for
the original and the quantized model, because a smaller file is only worth shipping if it still
answers like the model that was tuned:

- size on disk (the weight files);
- perplexity on held-out records: only the answer tokens, with the chat template and masking that
  training uses (`lmtune.eval.loss`), so it is the number the run's validation loss reports;
- greedy agreement on a fixed prompt set: the share of the original's greedy tokens the quantized
  model reproduces before its first different token, averaged over the prompts;
- generation tokens/s (prompt + decode, batch 1, on this machine).

An export whose perplexity rises more than `max_ppl_increase` (relative) fails unless forced
(`perplexity_gate`). GGUF files are measured in llama.cpp (`lmtune.export.gguf.quality`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError

# The fixed prompt set for greedy agreement and speed (shared with the GGUF measurement).
QUALITY_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain what a neural network is in one sentence.",
    "List three fruits.",
)
GREEDY_TOKENS = 32
# Default limit on the relative perplexity rise (0.10: quantized perplexity at most 1.10 x the original).
DEFAULT_MAX_PPL_INCREASE = 0.10
# The GGUF types that quantize (f16/bf16/f32 are float copies: nothing to measure).
MEASURED_GGUF_QUANTS = ("q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k")


def folder_size(folder: Path) -> int:
    """Bytes of the weight files (safetensors) in a model folder."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def prompt_ids(tokenizer: Any, prompts: tuple[str, ...] = QUALITY_PROMPTS) -> list[list[int]]:
    """The prompts as chat-templated token ids, the way the GGUF checks encode them."""
    from lmtune.export.gguf.verify import chat_prompt_ids

    return [chat_prompt_ids(tokenizer, p) for p in prompts]


def hf_greedy(
    model: Any, prompts: list[list[int]], stop: list[int], steps: int
) -> tuple[list[list[int]], float]:
    """Greedy token ids per prompt (argmax by hand, KV cache) and the generation tokens/s."""
    import torch

    device = next(model.parameters()).device
    outs: list[list[int]] = []
    seconds = 0.0
    with torch.inference_mode():
        for ids in prompts:
            start = time.perf_counter()
            out = model(torch.tensor([ids], device=device), use_cache=True)
            new: list[int] = []
            while True:
                token = int(out.logits[0, -1].argmax())
                new.append(token)
                if token in stop or len(new) >= steps:
                    break
                out = model(
                    torch.tensor([[token]], device=device),
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )
            seconds += time.perf_counter() - start
            outs.append(new)
    generated = sum(len(n) for n in outs)
    return outs, (generated / seconds if seconds else 0.0)


def measure_hf(model: Any, tokenizer: Any, folder: Path, items: list[Any] | None) -> dict[str, Any]:
    """Size, perplexity on `items` (answer tokens), greedy ids and tokens/s of a transformers model."""
    from lmtune.eval.loss import conversation_nll, corpus_loss

    out: dict[str, Any] = {"size_bytes": folder_size(folder)}
    if items:
        out.update(corpus_loss(conversation_nll(model, tokenizer, items)))
    from lmtune.export.gguf.verify import stop_ids

    greedy, speed = hf_greedy(model, prompt_ids(tokenizer), stop_ids(tokenizer, model), GREEDY_TOKENS)
    out["tokens_per_second"] = speed
    out["greedy"] = greedy
    return out


def agreement(reference: list[list[int]], other: list[list[int]]) -> dict[str, Any]:
    """Share of the reference's greedy tokens reproduced before the first difference, per prompt."""
    shares = []
    for ref, got in zip(reference, other):
        same = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
        shares.append(1.0 if not ref else same / len(ref))
    return {
        "greedy_prefix_agreement": sum(shares) / len(shares) if shares else None,
        "greedy_identical_prompts": sum(
            s == 1.0 and len(r) == len(o) for s, r, o in zip(shares, reference, other)
        ),
        "prompts": len(shares),
    }


def compare(unquantized: dict[str, Any], quantized: dict[str, Any]) -> dict[str, Any]:
    """The report's comparison fields from two measurements (their greedy ids are consumed)."""
    out = agreement(unquantized.pop("greedy"), quantized.pop("greedy"))
    out["size_ratio"] = (
        quantized["size_bytes"] / unquantized["size_bytes"] if unquantized["size_bytes"] else None
    )
    u, q = unquantized.get("perplexity"), quantized.get("perplexity")
    out["ppl_increase"] = (q / u - 1.0) if (u and q) else None
    return out


def perplexity_gate(report: dict[str, Any], max_increase: float, *, force: bool, what: str) -> str | None:
    """None when the export may stay; else the reason it fails (a ConfigError unless `force`).

    With `force` the reason is returned (to print) and the export stays."""
    rise = report.get("ppl_increase")
    report["max_ppl_increase"] = max_increase
    if rise is None or rise <= max_increase:
        report["ppl_gate"] = "passed" if rise is not None else "not measured (no held-out records)"
        return None
    u, q = report["unquantized"]["perplexity"], report["quantized"]["perplexity"]
    reason = (
        f"{what}: perplexity on the held-out records rises {100 * rise:.1f}% ({u:.4f} -> {q:.4f}), more than "
        f"the {100 * max_increase:.1f}% limit (--max-ppl-increase {max_increase:g})"
    )
    report["ppl_gate"] = "forced" if force else "failed"
    if not force:
        raise ConfigError(
            f"{reason}; the export was removed. Pass --force to keep it, raise --max-ppl-increase, "
            "or choose a scheme with more bits."
        )
    return reason


def gate_folder(out_dir: Path, report: dict[str, Any], max_increase: float, *, force: bool) -> str | None:
    """`perplexity_gate` for an exported folder: removed when the export fails."""
    import shutil

    try:
        return perplexity_gate(report, max_increase, force=force, what=f"{report['format']} export {out_dir}")
    except ConfigError:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise


def check_limit(max_increase: float) -> None:
    if not max_increase >= 0:  # also catches NaN
        raise ConfigError(
            f"--max-ppl-increase {max_increase}: give a relative rise >= 0, e.g. 0.1 for at most 10% higher perplexity"
        )


def markdown_table(report: dict[str, Any], *, original: str, quantized: str) -> list[str]:
    """The measured table (original vs quantized) as markdown lines, for a README."""
    u, q = report["unquantized"], report["quantized"]

    def f(x: Any, digits: int = 3) -> str:
        return "-" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))

    rows = [
        ("weights on disk (MiB)", f(u["size_bytes"] / 2**20, 1), f(q["size_bytes"] / 2**20, 1)),
        ("perplexity (held-out answers)", f(u.get("perplexity"), 4), f(q.get("perplexity"), 4)),
        ("generation tokens/s (batch 1, this machine)", f(u.get("tokens_per_second"), 1),
         f(q.get("tokens_per_second"), 1)),
    ]  # fmt: skip
    agree = report.get("greedy_prefix_agreement")
    return [
        f"| | {original} | {quantized} |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"Greedy agreement with the original on {report.get('prompts')} fixed prompts: "
        f"{'-' if agree is None else f'{100 * agree:.0f}%'} of its {GREEDY_TOKENS}-token answers reproduced "
        f"before the first difference ({report.get('greedy_identical_prompts')} identical). Perplexity rise "
        f"limit {100 * report.get('max_ppl_increase', DEFAULT_MAX_PPL_INCREASE):.0f}%: "
        f"{report.get('ppl_gate', '-')}.",
    ]


def summary_line(report: dict[str, Any], name: str) -> str:
    """One printed line: size, perplexity, agreement, speed, original -> quantized."""
    u, q = report["unquantized"], report["quantized"]

    def f(x: float | None, digits: int = 4) -> str:
        return "-" if x is None else f"{x:.{digits}f}"

    agree = report.get("greedy_prefix_agreement")
    return (
        f"{name}: {u['size_bytes'] / 2**20:.1f} -> {q['size_bytes'] / 2**20:.1f} MiB, perplexity "
        f"{f(u.get('perplexity'))} -> {f(q.get('perplexity'))}, greedy agreement "
        f"{'-' if agree is None else f'{100 * agree:.0f}%'} ({report.get('greedy_identical_prompts')}/"
        f"{report.get('prompts')} prompts identical), {f(u.get('tokens_per_second'), 1)} -> "
        f"{f(q.get('tokens_per_second'), 1)} tokens/s"
    )
