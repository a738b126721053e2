"""`lmtune export TARGET OUT --format onnx`: a float32 ONNX graph for onnxruntime, checked against torch.

    model (float32, merged) ──► wrapper: plain tensors in and out, a transformers DynamicCache built
        inside from the past tensors ──► torch.onnx.export(dynamo=True) ──► OUT/model.onnx
        (+ model.onnx.data when the weights pass 2 GB) ──► tokenizer files (chat template included),
        config.json, generation_config.json ──► onnxruntime on CPU vs torch: logits of chat-templated
        prompts, alone and as a left-padded batch, and greedy answers ──► OUT/onnx_verify.json

The graph (batch, seq, past and total = past + seq are dynamic; past may be 0, so one graph runs both
the prompt and every decoding step):

    input_ids [batch, seq] int64, attention_mask [batch, total] int64 (0 = padding),
    position_ids [batch, seq] int64, past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim]
    ──► logits [batch, seq, vocab], present.{i}.key / .value [batch, kv_heads, total, head_dim]

position_ids is an input because with left padding the positions must count real tokens only, as
transformers' generate counts them. A model whose cache is not one plain full-attention layer per
block (sliding-window or recurrent layers), or whose cache graph torch.onnx cannot export, gets the
graph without past key values (input_ids, attention_mask, position_ids -> logits; decoding re-runs the
whole sequence); the report's `kv_cache` says which was written. `onnx_greedy` is how to run either.
"""

from __future__ import annotations

import importlib
import json
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lmtune.errors import ConfigError

# float32 on both sides: only the order of additions differs. Measured on SmolLM2-135M-Instruct
# (docs/export_onnx.md): max 1.1e-4, mean 1.3e-5; the tiny test models: under 1e-5.
MAX_ABS_DIFF_LIMIT = 1e-3
MEAN_ABS_DIFF_LIMIT = 1e-4
EXTERNAL_DATA_BYTES = 1_800_000_000  # one protobuf file holds at most 2 GB
INSTALL_HINT = "pip install 'lmtune[onnx]'"


def require_onnx(what: str = "lmtune export --format onnx") -> None:
    """A sentence naming the missing packages and the extra that installs them, not an ImportError."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"{what} needs {', '.join(missing)}, which is not installed: {INSTALL_HINT}")


def export_onnx(
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    *,
    kv_cache: bool = True,
    max_new_tokens: int = 16,
    threads: int | None = None,
    say: Any = print,
) -> dict[str, Any]:
    """Write `model` (float32, merged) as an onnxruntime-ready folder and verify it; returns the report
    (also in OUT/onnx_verify.json). A failed check is `passed: False`, not an exception: the caller
    decides whether to keep the folder."""
    require_onnx()
    if not (hasattr(model, "can_generate") and model.can_generate()):
        raise ConfigError(
            f"ONNX export writes causal language models; {type(model).__name__} does not generate text"
        )
    refuse_moe(model)
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise ConfigError(f"ONNX export takes a float32 model, got {dtype}; load it with dtype float32")
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    start = time.perf_counter()
    with_cache = kv_cache and _plain_cache(model) is not None
    if kv_cache and not with_cache:
        say("This model's cache is not one full-attention layer per block: exporting without a cache.")
    if with_cache:
        try:
            _export_graph(model, path, with_cache=True)
        except Exception as err:  # noqa: BLE001 - any exporter failure: the no-cache graph may still work
            say(f"The graph with past key values did not export ({_first_line(err)}); exporting without.")
            with_cache = False
    if not with_cache:
        try:
            _export_graph(model, path, with_cache=False)
        except Exception as err:  # noqa: BLE001 - the exporter raises many types; the user gets one sentence
            raise ConfigError(
                f"torch.onnx could not export this {model.config.model_type} model: {_first_line(err)}"
            ) from err
    seconds = time.perf_counter() - start
    tokenizer.save_pretrained(out_dir)  # the chat template travels with it
    model.config.save_pretrained(out_dir)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out_dir)
    say(f"Wrote {path} in {seconds:.0f}s; running it with onnxruntime to verify ...")
    report = verify_onnx(path, model, tokenizer, max_new_tokens=max_new_tokens, threads=threads)
    report.update(
        kv_cache=with_cache,
        export_seconds=seconds,
        size_bytes=sum(f.stat().st_size for f in out_dir.glob("model.onnx*")),
        torch=torch.__version__,
    )
    (out_dir / "onnx_verify.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def refuse_moe(model: Any) -> None:
    """Refuse a mixture-of-experts model before any export time is spent.

    transformers 5 runs the experts through its own grouped-matmul operator
    (transformers.grouped_mm_fallback over the fused [experts, ...] weights), which torch.onnx has no
    translation for: the export fails after minutes with a DispatchError (checked on tiny Qwen3-MoE and
    Mixtral models, tests/models/test_families.py). Saying so up front costs the user nothing.
    """
    config = model.config
    experts = next(
        (
            getattr(config, a)
            for a in ("num_experts", "num_local_experts", "n_routed_experts")
            if getattr(config, a, 0)
        ),
        0,
    )
    if experts and experts > 1:
        raise ConfigError(
            f"ONNX export does not support mixture-of-experts models ({config.model_type}, {experts} experts): "
            "transformers runs the experts through a grouped-matmul operator torch.onnx cannot translate. "
            "Export to GGUF for llama.cpp instead (lmtune export RUN OUT.gguf --format gguf)."
        )


class _CachedLM(torch.nn.Module):
    """The model with plain tensors in and out: torch.onnx needs flat inputs, the model a Cache object."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):  # noqa: ANN001, ANN201, ANN002
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2])), config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


class _PlainLM(torch.nn.Module):
    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids):  # noqa: ANN001, ANN201
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        return out.logits


def _plain_cache(model: Any, ids: torch.Tensor | None = None) -> list[torch.Tensor] | None:
    """The flat [k0, v0, k1, v1, ...] cache of a forward over `ids`, or None when the model's cache is
    not one plain full-attention layer per block (only those round-trip through past/present tensors)."""
    from transformers.cache_utils import DynamicLayer

    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]) if ids is None else ids
    with torch.no_grad():
        cache = model(input_ids=ids.to(model.device), use_cache=True).past_key_values
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or layer.keys is None for layer in layers):
        return None
    return [t for layer in layers for t in (layer.keys, layer.values)]


def _export_graph(model: Any, path: Path, *, with_cache: bool) -> None:
    from torch.export import Dim

    batch, seq, past_len, total = Dim("batch"), Dim("seq"), Dim("past"), Dim("total")
    device = model.device
    ids = torch.tensor([[10, 11, 12], [13, 14, 15]], device=device)  # sizes >= 2: export specializes 0 and 1
    positions = torch.arange(3, device=device).expand(2, 3)
    past: list[torch.Tensor] = []
    if with_cache:
        past = _plain_cache(model) or []
        positions = positions + past[0].shape[2]
    mask = torch.ones(2, int(positions[0, -1]) + 1, dtype=torch.int64, device=device)
    layers = len(past) // 2
    names_in = ["input_ids", "attention_mask", "position_ids"]
    names_in += [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    names_out = ["logits"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    dynamic: tuple[Any, ...] = (
        {0: batch, 1: seq},
        {0: batch, 1: total if with_cache else seq},
        {0: batch, 1: seq},
    )
    if with_cache:
        dynamic += (tuple({0: batch, 2: past_len} for _ in past),)
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # axis-renaming and deprecation notes from the exporter
        torch.onnx.export(
            _CachedLM(model) if with_cache else _PlainLM(model),
            (ids, mask, positions, *past),
            str(path),
            dynamo=True,
            input_names=names_in,
            output_names=names_out,
            dynamic_shapes=dynamic,
            external_data=large,
            verbose=False,
        )


def open_session(path: str | Path, *, threads: int | None = None) -> Any:
    """An onnxruntime CPU session on `path` (`threads`: intra-op threads, None for onnxruntime's choice)."""
    require_onnx("running an ONNX export")
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session: Any, input_ids: Any, attention_mask: Any | None = None) -> Any:
    """Logits [batch, seq, vocab] (numpy) of a whole, possibly left-padded, batch: an empty cache and
    positions that count real tokens only (as transformers' generate numbers them)."""
    import numpy as np

    ids = np.asarray(input_ids, dtype=np.int64)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
    positions = np.where(mask == 1, mask.cumsum(-1) - 1, 1)
    return session.run(["logits"], _feed(session, ids, mask, positions, _empty_past(session, len(ids))))[0]


def onnx_greedy(
    session: Any,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 64,
    *,
    eos_ids: Sequence[int] | None = None,
) -> list[int]:
    """Greedy new token ids after `prompt` (text already rendered with the chat template), decoded by the
    graph alone: with its cache when it has one (one token per step), else re-running the sequence."""
    import numpy as np

    eos = set(eos_ids if eos_ids is not None else [tokenizer.eos_token_id])
    ids = np.asarray([tokenizer(prompt, add_special_tokens=False)["input_ids"]], dtype=np.int64)
    past = _empty_past(session, 1)
    cached = bool(past)
    present_names = [o.name for o in session.get_outputs()][1:]
    step, done, new = ids, 0, []
    for _ in range(max_new_tokens):
        total = done + step.shape[1]
        positions = np.arange(done, total, dtype=np.int64)[None]
        outs = session.run(None, _feed(session, step, np.ones((1, total), np.int64), positions, past))
        token = int(outs[0][0, -1].argmax())
        new.append(token)
        if token in eos:
            break
        if cached:
            past = {n.replace("present.", "past_key_values."): t for n, t in zip(present_names, outs[1:])}
            step, done = np.asarray([[token]], dtype=np.int64), total
        else:
            step = np.concatenate([step, [[token]]], axis=1)
    return new


def _empty_past(session: Any, batch: int) -> dict[str, Any]:
    import numpy as np

    past = {}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values."):
            shape = [d if isinstance(d, int) else 0 for d in i.shape]
            shape[0] = batch
            past[i.name] = np.zeros(shape, dtype=np.float32)
    return past


def _feed(session: Any, ids: Any, mask: Any, positions: Any, past: dict[str, Any]) -> dict[str, Any]:
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past}
    wanted = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feed.items() if k in wanted}


def verify_onnx(
    path: Path, model: Any, tokenizer: Any, *, max_new_tokens: int = 16, threads: int | None = None
) -> dict[str, Any]:
    """onnxruntime vs torch float32 on the chat-templated probe prompts: logits one at a time and as a
    left-padded batch of two (real tokens only), then greedy answers token for token."""
    import onnx
    import onnxruntime as ort

    from lmtune.export.merge import parity_inputs
    from lmtune.infer.generate import _eos_ids

    session = open_session(path, threads=threads)
    texts = parity_inputs(tokenizer)
    diffs = []
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            diffs.append(_abs_diff(model(input_ids=ids).logits, onnx_logits(session, ids)))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        batch = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[:2]]
        width = max(map(len, batch))
        ids = torch.tensor([[pad_id] * (width - len(b)) + b for b in batch])
        mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        ref = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        padded = _abs_diff(ref[mask == 1], onnx_logits(session, ids, mask)[mask.numpy() == 1])
    every = torch.cat(diffs + [padded])
    greedy = _compare_greedy(session, model, tokenizer, texts, max_new_tokens, _eos_ids(model, tokenizer))
    max_diff, mean_diff = float(every.max()), float(every.mean())
    graph = onnx.load(str(path), load_external_data=False)
    return {
        "passed": max_diff <= MAX_ABS_DIFF_LIMIT
        and mean_diff <= MEAN_ABS_DIFF_LIMIT
        and greedy["greedy_identical"],
        "format": "onnx",
        "opset": next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
        "prompts": len(texts),
        "max_abs_diff": max_diff,
        "mean_abs_diff": mean_diff,
        "padded_batch_max_abs_diff": float(padded.max()),
        "limits": {"max_abs_diff": MAX_ABS_DIFF_LIMIT, "mean_abs_diff": MEAN_ABS_DIFF_LIMIT},
        **greedy,
        "onnxruntime": ort.__version__,
    }


def _compare_greedy(
    session: Any, model: Any, tokenizer: Any, texts: list[str], max_new_tokens: int, eos: list[int]
) -> dict[str, Any]:
    """Greedy ids from transformers' generate vs from the graph, with each side's tokens per second."""
    torch_ids, onnx_ids, torch_s, onnx_s = [], [], 0.0, 0.0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                repetition_penalty=1.0,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
            )
        torch_s += time.perf_counter() - start
        torch_ids.append(out[0, ids.shape[1] :].tolist())
        start = time.perf_counter()
        onnx_ids.append(onnx_greedy(session, tokenizer, text, max_new_tokens, eos_ids=eos))
        onnx_s += time.perf_counter() - start
    return {
        "greedy_identical": torch_ids == onnx_ids,
        "greedy_tokens": sum(map(len, torch_ids)),
        "tokens_per_second": {
            "torch": sum(map(len, torch_ids)) / torch_s,
            "onnxruntime": sum(map(len, onnx_ids)) / onnx_s,
        },
    }


def _abs_diff(reference: torch.Tensor, got: Any) -> torch.Tensor:
    return (reference.float() - torch.as_tensor(got)).abs().flatten()


def _first_line(err: BaseException) -> str:
    """The line that says what went wrong (torch.onnx puts it under "Exception summary"), colours removed."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line]
    for i, line in enumerate(lines[:-1]):
        if line.endswith("Exception summary"):
            return lines[i + 1][:300]
    return (lines[0] if lines else type(err).__name__)[:300]
