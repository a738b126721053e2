"""`lmtune merge RUN OUT_DIR`: fold what a run trained into its base and save a plain model folder,
with the evidence that the merged model answers like the adapter.

    run dir ──► base in float32, no quantization (QLoRA: the ORIGINAL weights, not the 4-bit ones)
                 + the run's adapter ──► reference logits and greedy answers on a few prompts
                 ──► merge_and_unload ──► cast to the output dtype ──► parity vs the reference
                 ──► save (sharded safetensors, config, tokenizer + chat template, generation
                     config, README model card, parity.json) ──► reload the folder: same logits

A merge whose parity fails its dtype's threshold is an error (nothing is left in OUT_DIR unless
--force): the complaint users have most about merged models is that they answer differently.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError

DTYPES = ("auto", "float32", "bfloat16", "float16")
# Parity thresholds on the mean absolute logit difference, by output dtype. float32 only reorders
# additions; bf16/fp16 round every weight. Measured on the quickstart's SmolLM2-135M + LoRA run
# (docs/export.md): float32 8e-6, bfloat16 0.13, float16 0.017.
MEAN_DIFF_LIMIT = {"float32": 1e-3, "bfloat16": 0.3, "float16": 0.05}
PROMPTS = (
    "Who are you?",
    "What is the capital of France?",
    "Write one sentence about the sea.",
)


@dataclass
class MergeResult:
    out_dir: Path
    parity: dict[str, Any]
    dtype: str


def merge_run(
    run: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "auto",
    force: bool = False,
    overwrite: bool = False,
    max_new_tokens: int = 24,
    shard_size: str = "2GB",
    say: Any = print,
) -> MergeResult:
    """Merge `run` into its base and save it to `out_dir` (see the module docstring)."""
    import torch

    from lmtune.methods.base import ensure_mergeable
    from lmtune.run.layout import is_run_dir, read_marker
    from lmtune.run.load import load_target

    run_dir, out = Path(run), Path(out_dir)
    if not is_run_dir(run_dir):
        raise ConfigError(
            f"{run_dir} is not a run directory (no lmtune_run.json): lmtune merge takes the folder lmtune "
            "train wrote. A plain model folder needs no merge."
        )
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; choose another folder or pass --overwrite")
    marker = read_marker(run_dir)
    ensure_mergeable(marker["method"])
    out_dtype = dtype if dtype != "auto" else base_dtype(marker)

    say(f"Loading {run_dir} on its full-precision base ...")
    loaded = load_target(str(run_dir), dtype="float32", quiet=True, full_precision=True)
    model, tokenizer = loaded.model, loaded.tokenizer
    classifier = marker.get("task") == "classification"
    inputs = parity_inputs(tokenizer)
    reference = probe(model, tokenizer, inputs, max_new_tokens=0 if classifier else max_new_tokens)

    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    for p in merged.parameters():  # parameters only: buffers such as RoPE's inv_freq stay float32,
        p.data = p.data.to(getattr(torch, out_dtype))  # as they are when the saved folder is loaded
    got = probe(merged, tokenizer, inputs, max_new_tokens=0 if classifier else max_new_tokens)
    parity = compare_probes(reference, got, out_dtype)
    if marker["method"] == "qlora":
        parity["note"] = (
            "QLoRA: merged into the original full-precision base weights; the reference is the adapter on "
            "those same weights (the 4-bit training model differs from both by the quantization error)."
        )
    say(_parity_line(parity))
    if not parity["passed"] and not force:
        raise ConfigError(
            f"merge parity failed: mean |logit difference| {parity['mean_abs_diff']:.3g} exceeds "
            f"{parity['limit']:.3g} for {out_dtype}"
            + ("" if parity["greedy_identical"] is not False else "; greedy answers differ")
            + ". Nothing was written. Try --dtype float32, or pass --force to save it anyway."
        )

    if out.exists() and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    _strip_training_state(merged)
    merged.save_pretrained(out, max_shard_size=shard_size)
    tokenizer.save_pretrained(out)
    reloaded = _reload(out, classifier, out_dtype)
    again = probe(reloaded, tokenizer, inputs, max_new_tokens=0)
    parity["reloaded_max_abs_diff"] = _max_diff(got["logits"], again["logits"])
    if parity["reloaded_max_abs_diff"] > 0:
        raise ConfigError(
            f"the folder written to {out} does not reload to the merged model (max |logit difference| "
            f"{parity['reloaded_max_abs_diff']:.3g}); please report this with the run directory"
        )
    (out / "parity.json").write_text(json.dumps(parity, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(model_card(run_dir, marker, parity, out_dtype), encoding="utf-8")
    return MergeResult(out, parity, out_dtype)


def base_dtype(marker: dict[str, Any]) -> str:
    """The dtype the base model's config declares (float32 when it declares none or is a .gguf)."""
    from transformers import AutoConfig

    from lmtune.models.resolve import resolve_model_ref

    ref = resolve_model_ref(marker["base_model"])
    if ref.gguf_file:
        return "float32"
    remote = bool(marker.get("trust_remote_code"))  # never an interactive question
    declared = getattr(AutoConfig.from_pretrained(ref.path, trust_remote_code=remote), "dtype", None)
    name = str(declared).replace("torch.", "") if declared is not None else "float32"
    return name if name in MEAN_DIFF_LIMIT else "float32"


def parity_inputs(tokenizer: Any) -> list[str]:
    """The probe prompts as the model sees them: through the chat template when there is one."""
    if getattr(tokenizer, "chat_template", None):
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            for p in PROMPTS
        ]
    return list(PROMPTS)


def probe(model: Any, tokenizer: Any, texts: list[str], *, max_new_tokens: int) -> dict[str, Any]:
    """float32 logits of every prompt token (one prompt at a time: no padding) and greedy answers."""
    import torch

    from lmtune.infer.generate import _eos_ids

    model.eval()
    logits, answers = [], []
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            logits.append(model(input_ids=ids).logits.float())
            if max_new_tokens:
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=_eos_ids(model, tokenizer),
                    pad_token_id=tokenizer.pad_token_id,
                )
                answers.append(out[0, ids.shape[1] :].tolist())
    return {"logits": logits, "answers": answers}


def compare_probes(reference: dict[str, Any], got: dict[str, Any], dtype: str) -> dict[str, Any]:
    import torch

    diffs = torch.cat([(a - b).abs().flatten() for a, b in zip(reference["logits"], got["logits"])])
    greedy = reference["answers"] == got["answers"] if reference["answers"] else None
    mean = float(diffs.mean())
    limit = MEAN_DIFF_LIMIT[dtype]
    return {
        "dtype": dtype,
        "prompts": len(reference["logits"]),
        "max_abs_diff": float(diffs.max()),
        "mean_abs_diff": mean,
        "limit": limit,
        "greedy_identical": greedy,
        # float32 changes only the order of additions, so its greedy answers must match too; bf16/fp16
        # round every weight, and a near-tie between two tokens may then flip (reported, not failed).
        "passed": mean <= limit and (greedy is not False or dtype != "float32"),
    }


def _max_diff(a: list[Any], b: list[Any]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def _parity_line(p: dict[str, Any]) -> str:
    greedy = {True: "identical", False: "DIFFERENT", None: "n/a (classifier)"}[p["greedy_identical"]]
    verdict = "passed" if p["passed"] else "FAILED"
    return (
        f"Parity ({p['dtype']}, {p['prompts']} prompts): max |logit diff| {p['max_abs_diff']:.3g}, "
        f"mean {p['mean_abs_diff']:.3g} (limit {p['limit']:.3g}); greedy answers {greedy}: {verdict}"
    )


def _strip_training_state(model: Any) -> None:
    """A merged model is for inference: the generation cache back on, no leftover PEFT attributes."""
    if getattr(model.config, "use_cache", None) is False:
        model.config.use_cache = True


def _reload(out: Path, classifier: bool, dtype: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    return cls.from_pretrained(out, dtype=getattr(torch, dtype))


def model_card(run_dir: Path, marker: dict[str, Any], parity: dict[str, Any], dtype: str) -> str:
    """README.md for the merged folder: where it came from, how it was trained, the parity evidence."""
    config = (
        (run_dir / "config.yaml").read_text(encoding="utf-8") if (run_dir / "config.yaml").is_file() else ""
    )
    stats_path = run_dir / "data_stats.json"
    stats = json.dumps(json.loads(stats_path.read_text()), indent=2) if stats_path.is_file() else "{}"
    greedy = parity["greedy_identical"]
    return "\n".join(
        [
            "---",
            "library_name: transformers",
            "tags: [lmtune, merged]",
            "---",
            "",
            f"# {run_dir.name} (merged)",
            "",
            f"Base model `{marker['base_model']}` fine-tuned with lmtune {marker.get('lmtune_version', '')} "
            f"(task {marker.get('task', 'sft')}, method {marker['method']}); the trained weights are merged "
            f"into the base and saved in {dtype}. Load it like any model:",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            'model = AutoModelForCausalLM.from_pretrained(".")',
            'tokenizer = AutoTokenizer.from_pretrained(".")  # with the chat template it was trained with',
            "```",
            "",
            "## Parity with the unmerged adapter",
            "",
            f"On {parity['prompts']} prompts: max |logit difference| {parity['max_abs_diff']:.3g}, mean "
            f"{parity['mean_abs_diff']:.3g} (limit {parity['limit']:.3g}); greedy answers identical: "
            f"{'n/a' if greedy is None else greedy}. Details in parity.json.",
            "",
            "## Training config",
            "",
            "```yaml",
            config.rstrip(),
            "```",
            "",
            "## Data",
            "",
            "```json",
            stats,
            "```",
            "",
        ]
    )


def plain_model(target: str, *, say: Any = print) -> tuple[Any, Any, str]:
    """(model, tokenizer, name) in float32 for an exporter: a run directory merged into its full-precision
    base (a method that cannot merge is refused with its reason), any other target loaded as is."""
    from lmtune.methods.base import ensure_mergeable
    from lmtune.run.layout import is_run_dir, read_marker
    from lmtune.run.load import load_target

    if is_run_dir(target):
        ensure_mergeable(read_marker(target)["method"])
        say(f"Loading {target} on its full-precision base and merging it ...")
        loaded = load_target(target, dtype="float32", quiet=True, full_precision=True)
        model = loaded.model.merge_and_unload() if hasattr(loaded.model, "merge_and_unload") else loaded.model
        return model.eval(), loaded.tokenizer, Path(target).name
    say(f"Loading {target} ...")
    loaded = load_target(target, dtype="float32", quiet=True)
    return loaded.model, loaded.tokenizer, loaded.name
