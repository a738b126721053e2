"""How much memory a training run will need, predicted before any weight is loaded.

`lmtune estimate` prints it; `train.gradient_checkpointing: auto` asks it whether the run fits
without checkpointing (which costs about a third more compute). The model is built from its config
on the meta device (no memory), the method is put on it and the parameters are counted; the rest
is arithmetic over that model's shapes, each term counted from what PyTorch allocates:

    peak = overhead + weights + max(gradients + optimizer + activations + loss,  # a training step
                                    loading)                                     # load / cast back

- weights: trained parameters float32; frozen ones bf16 when bf16 is on and the method saves only
  what it trains (train.bf16_frozen), else float32; QLoRA's quantised Linear weights ~0.5 byte.
- gradients: 4 bytes per trained parameter; optimizer: AdamW 8, the 8-bit AdamW 2.
- activations: what autograd keeps for the backward pass, counted op by op per decoder layer
  (`_layer_bytes`), plus one layer's working memory; with checkpointing each layer's input only,
  plus one layer recomputed.
- loss: one train.loss_chunk of logits (compute dtype and float32 buffers), or the whole batch's.
- overhead: this process's resident memory, measured once torch, transformers, PEFT and the
  Trainer are imported, as they are in a training process.
- loading: above the final weights while loading (float32 file pages while frozen weights are cast
  to bf16, a GGUF's mapping and dequantisation buffers) or casting back to float32 at the end.

This is the memory the tensors need. glibc's malloc keeps freed blocks under 32 MiB in its heap,
so a process's resident size (RSS) runs above it, by up to ~30% for small models on CPU (measured:
docs/estimate.md).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.config.schema import RunConfig
from lmtune.errors import LmtuneError, ModelError
from lmtune.plan.memory import available_memory, format_bytes, resident_memory
from lmtune.plan.source import ModelSource, model_source, transformers_config
from lmtune.plan.spec import LayerSpec, ModelSpec, spec_from_config, spec_from_model
from lmtune.train.plan import PROMPT_LEARNING, SAVES_FROZEN_WEIGHTS, choose_attention

PEFT_METHODS = ("lora", "qlora", "ia3", "ln_tuning", *PROMPT_LEARNING)  # reference model = adapter off
REFERENCE_LOSSES = ("sigmoid", "ipo", "hinge", "kto")  # preference losses that need a reference model
CUDA_CONTEXT = 600 * 2**20  # CUDA context + cuBLAS workspace, which mem_get_info cannot see in advance
# RSS of a fresh process once torch 2.13 (CPU), transformers, PEFT, accelerate and the Trainer are
# imported, as in a training process (measured 530 MiB on the 2-core EPYC dev machine, 2026-12-04)
CPU_RUNTIME = 530 * 2**20
_OUT_PROJ = ("o_proj", "out_proj")  # its input is the attention output, already kept by SDPA


class EstimateError(ModelError):
    """The model loads, but the estimate does not understand its shape (training is not blocked)."""


@dataclass
class MemoryEstimate:
    """Predicted memory of one training run, in bytes."""

    parameters: int
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    loss: int
    overhead: int
    gradient_checkpointing: bool
    loading: int = 0  # above `weights`, while the model loads (before training allocates anything)
    activations_kept: int = 0  # what autograd keeps: `activations` less the backward's working memory
    tokens_per_step: int = 0  # per forward pass (one micro-batch)
    notes: list[str] = field(default_factory=list)

    @property
    def training(self) -> int:
        """What a training step holds on top of the weights."""
        return self.gradients + self.optimizer + self.activations + self.loss

    @property
    def peak(self) -> int:
        return self.overhead + self.weights + max(self.training, self.loading)

    def fits(self, limit: int) -> bool:
        return self.peak <= limit


# -- the model, without its weights ----------------------------------------------------------------
def meta_model(cfg: RunConfig, source: ModelSource) -> Any:
    """The model with the method on it, on the meta device: shapes and trainable flags, no memory."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from lmtune.methods.base import get_method, method_options

    config = transformers_config(source)
    with init_empty_weights():
        if cfg.task == "classification":
            config.num_labels = len(cfg.data.labels or ()) or 2  # the head's size does not matter here
            if getattr(config, "pad_token_id", None) is None:
                config.pad_token_id = 0
            model = AutoModelForSequenceClassification.from_config(
                config, trust_remote_code=source.trust_remote_code
            )
        else:
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=source.trust_remote_code)
    model.tie_weights()  # from_config under init_empty_weights leaves tied weights as two tensors
    name = cfg.method.name
    opts = method_options(name, source.method_options) if source.method_options else cfg.method
    # Initialisations that compute from the weights (PiSSA's SVD, a prompt from text) cannot run on
    # meta; the default ones give the same trainable shapes.
    if opts.name in ("lora", "qlora"):
        opts = opts.model_copy(update={"init": "default"})
    if opts.name == "prompt":
        opts = opts.model_copy(update={"prompt_init": "random", "prompt_init_text": None})
    # QLoRA quantises the base while loading, which needs real weights: its adapter is LoRA's on the
    # same modules, so LoRA's prepare counts its trainable parameters; `weights` prices the 4-bit base.
    method = get_method("lora" if name == "qlora" else name)
    with torch.device("meta"):
        return method.prepare(model, opts, task=cfg.task)


# -- shapes -------------------------------------------------------------------------------------------
@dataclass
class Shape:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    vocab: int

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def model_shape(config: Any) -> Shape:
    """Layer dimensions from a transformers config (Llama-style names, GPT-2/BERT fallbacks)."""
    text = getattr(config, "get_text_config", lambda: config)()

    def get(*names: str, default: Any = None) -> Any:
        for n in names:
            v = getattr(text, n, None)
            if v is not None:
                return v
        return default

    hidden = get("hidden_size", "n_embd", "d_model")
    heads = get("num_attention_heads", "n_head")
    layers = get("num_hidden_layers", "n_layer")
    if not (hidden and heads and layers):
        raise EstimateError(
            f"Cannot read the layer sizes of this {type(config).__name__} (hidden size, heads, layers); "
            "lmtune estimate knows decoder and encoder transformers with the usual config names."
        )
    return Shape(
        hidden=hidden,
        intermediate=get("intermediate_size", "n_inner", default=4 * hidden) or 4 * hidden,
        heads=heads,
        kv_heads=get("num_key_value_heads", default=heads) or heads,
        head_dim=get("head_dim", default=hidden // heads) or hidden // heads,
        layers=layers,
        vocab=get("vocab_size", default=0),
    )


@dataclass
class LayerCost:
    """Bytes one decoder layer keeps per token for the backward pass, and per-layer constants."""

    per_token: int
    fixed: int  # bf16 copies of float32 Linear weights made by autocast and kept for the backward


def _layer_bytes(
    layer: LayerSpec,
    shape: Shape,
    *,
    compute: int,
    seq: int,
    attention: str,
    frozen_bytes: int,
    dropout_bytes: int,
    fused_lora: bool = False,
) -> LayerCost:
    """What autograd keeps for one decoder layer that gradients flow through, counted op by op.

    compute: bytes of the compute dtype (2 under bf16 autocast, 4 in float32). Per token:

    - each norm: its float32 input (4h) and the rstd (4); also the normalised input (4h) when the
      norm's weight trains;
    - each Linear whose weight trains: its input in the compute dtype (the attention output
      projection reads SDPA's saved output instead); a LoRA dropout keeps its mask: bool with
      lmtune's FastDropout or CUDA's fused dropout, else torch's CPU dropout keeps it in the
      compute dtype (lmtune turns PEFT's float32 input cast off under autocast, lora_fast.py);
      each LoRA adapter's dropped input, or without dropout or with the fused update
      (train.fused_lora, which recomputes it from the mask) the layer's input itself, kept once
      for the adapters that read it (q, k and v) and not at all for the output projection;
    - SDPA: q, k, v and the output (k and v repeated to all heads when there is a mask), the
      log-sum-exp per head; with a mask (packed or padded rows) a seq-wide row of it per token;
    - lmtune_packed (attention per packed sample): q, k, v gathered per sample and each head's row
      of softmax probabilities over its sample, priced for samples half the row long;
    - the MLP's elementwise part: gated (SwiGLU) keeps the gate, its activation and the up
      projection (3 x intermediate); a plain MLP its activation's input.

    Under autocast every float32 Linear weight is also cast to bf16 for the forward and that copy
    is kept for the backward: `fixed` counts those.
    """
    h, a = shape.hidden, compute
    per_token = fixed = 0
    gated = 0
    dropped = not fused_lora and layer.drops  # a dropped copy of the input per adapter
    shared: set[tuple[str, int]] = set()  # (parent module, width) of inputs the adapters already keep
    for linear in layer.linears:
        if linear.out_features in (shape.intermediate, 2 * shape.intermediate) and linear.in_features == h:
            gated += 2 if linear.out_features == 2 * shape.intermediate else 1
        owner, adapter, _ = linear.name.partition(".lora_A.")
        if adapter and not dropped:
            source = (owner.rpartition(".")[0], linear.in_features)
            if not owner.endswith(_OUT_PROJ) and source not in shared:
                per_token += a * linear.in_features
            shared.add(source)
        elif linear.trains and not linear.name.endswith(_OUT_PROJ):
            per_token += a * linear.in_features
        if a == 2 and (linear.trains or frozen_bytes == 4) and not (fused_lora and ".lora_" in linear.name):
            fixed += 2 * linear.in_features * linear.out_features  # the fused update casts in both passes
    for trains in layer.norms:
        per_token += 4 * h + 4 + (4 * h if trains else 0)
    for n_in, p in layer.dropouts:
        per_token += sum(dropout_bytes * n_in for x in p if x)
    if attention == "lmtune_packed":
        per_token += a * (shape.q_dim + 2 * shape.kv_dim) + a * shape.heads * (seq // 2)
    else:
        masked = attention == "masked"
        kv = shape.q_dim if masked else shape.kv_dim
        per_token += a * (2 * shape.q_dim + 2 * kv) + 4 * shape.heads + (a * seq if masked else 0)
    per_token += a * shape.intermediate * (3 if gated >= 2 else 1)
    return LayerCost(per_token, fixed)


def attention_kind(configured: str, *, device: str, packing: bool, rows: int) -> str:
    """What the attention keeps depends on the kernel training will use (plan.choose_attention):
    flash (varlen, no mask), lmtune_packed, masked SDPA or plain SDPA."""
    kernel = choose_attention(configured, device=device, packing=packing)
    if kernel in ("flash_attention_2", "lmtune_packed"):
        return "flash" if kernel == "flash_attention_2" else kernel
    return "masked" if packing or rows > 1 else "sdpa"  # a block-diagonal or padding mask for SDPA


# -- the estimate --------------------------------------------------------------------------------------
def estimate_memory(
    cfg: RunConfig, *, gradient_checkpointing: bool | None = None, device: str | None = None
) -> MemoryEstimate:
    """Predict the training run's memory; `gradient_checkpointing` None means as configured
    (auto counts as off: that is the question `decide_checkpointing` asks)."""
    from lmtune.train.args import use_bf16

    device = resolve_device_light(device or cfg.model.device)
    source = model_source(cfg)
    spec = model_spec(cfg, source)
    return _estimate(
        cfg, spec, source, device=device, bf16=use_bf16(cfg.train.bf16, device), ckpt=gradient_checkpointing
    )


def model_spec(cfg: RunConfig, source: ModelSource) -> ModelSpec:
    """The model's spec from its config's numbers where they suffice, else from the meta model."""
    from lmtune.methods.base import method_options

    shape = model_shape(source.config)
    opts = method_options(cfg.method.name, source.method_options) if source.method_options else cfg.method
    spec = spec_from_config(source.config, cfg, shape, opts)
    if spec is not None:
        return spec
    return spec_from_model(meta_model(cfg, source), shape.layers, qlora=cfg.method.name == "qlora")


def resolve_device_light(device: str) -> str:
    """models.load.resolve_device without importing torch where the answer is plainly cpu (no
    NVIDIA driver on this machine, torch not yet imported): `lmtune estimate` stays light."""
    name = (device or "cpu").strip().lower()
    if name == "cpu" or (name == "auto" and "torch" not in sys.modules and not Path("/dev/nvidia0").exists()):
        return "cpu"
    from lmtune.models.load import resolve_device

    return resolve_device(name)


def _estimate(
    cfg: RunConfig, spec: ModelSpec, source: ModelSource, *, device: str, bf16: bool, ckpt: bool | None
) -> MemoryEstimate:
    t, method = cfg.train, cfg.method.name
    if ckpt is None:
        ckpt = t.gradient_checkpointing is True
    shape = model_shape(source.config)
    notes: list[str] = []
    total, trainable = spec.total, spec.trainable

    # weights --------------------------------------------------------------------------------------
    explicit = {"float32": 4, "bfloat16": 2, "float16": 2}.get(cfg.model.dtype)
    trained_bytes = explicit or 4
    frozen_bytes = explicit or (2 if bf16 and t.bf16_frozen and method not in SAVES_FROZEN_WEIGHTS else 4)
    quantised = spec.quantised if method == "qlora" else 0
    frozen = total - trainable - quantised
    # bitsandbytes 4-bit: half a byte, plus an absmax per 64 weights (float32, or 8-bit when double
    # quantised); 8-bit: a byte
    per_quantised = 1.0 if cfg.method.bits == 8 else 0.5 + (1 if cfg.method.double_quant else 4) / 64
    weights = trainable * trained_bytes + frozen * frozen_bytes + int(quantised * per_quantised)
    if method == "qlora":
        notes.append(f"qlora: {quantised:,} Linear weights at {per_quantised:.2f} bytes each (bitsandbytes)")
    if cfg.task == "preference" and method not in PEFT_METHODS and cfg.preference.loss in REFERENCE_LOSSES:
        weights += weights  # TRL's reference model: a frozen copy of the starting model
        notes.append("preference: a frozen copy of the model serves as the reference model")

    # gradients and optimizer ------------------------------------------------------------------------
    gradients = trainable * trained_bytes
    optimizer = trainable * (2 if t.optim in ("adamw_8bit", "paged_adamw_8bit") else 2 * trained_bytes)

    # tokens per forward pass ------------------------------------------------------------------------
    seq = cfg.data.max_length + (cfg.method.num_virtual_tokens if method in PROMPT_LEARNING else 0)
    rows = t.batch_size * (2 if cfg.task == "preference" else 1)  # chosen and rejected, side by side
    tokens = rows * seq
    packing = cfg.task == "sft" and (
        cfg.data.packing is True or (cfg.data.packing == "auto" and method not in PROMPT_LEARNING)
    )
    attention = attention_kind(cfg.model.attn_implementation, device=device, packing=packing, rows=rows)

    # activations ------------------------------------------------------------------------------------
    compute = 2 if (bf16 or explicit == 2) else 4
    stream = 2 if frozen_bytes == 2 and not spec.embeddings_train else trained_bytes  # the residual stream
    flowing = method in PROMPT_LEARNING or spec.embeddings_train
    # lora_fast.FusedLora: plain LoRA on CPU, with FastDropout or no dropout (torch's is not fused)
    fused_lora = (
        method == "lora" and device == "cpu" and t.fused_lora and not cfg.method.use_dora
        and (t.fast_dropout or not any(layer.drops for layer in spec.layers))
    )  # fmt: skip
    costs: list[LayerCost] = []
    for layer in spec.layers:
        flowing = flowing or layer.trains
        if flowing:
            costs.append(
                _layer_bytes(
                    layer,
                    shape,
                    compute=compute,
                    seq=seq,
                    attention=attention,
                    frozen_bytes=frozen_bytes,
                    dropout_bytes=1 if device == "cuda" or t.fast_dropout else compute,
                    fused_lora=fused_lora,
                )
            )
    if not costs and trainable:  # layers not found: a generic layer (norms, attention, gated MLP)
        notes.append("decoder layers not found: activations priced for a generic layer")
        generic = 8 * shape.hidden + compute * (4 * shape.q_dim + 3 * shape.intermediate)
        costs = [LayerCost(generic, 0)] * shape.layers
    biggest = max(costs, key=lambda c: c.per_token * tokens + c.fixed, default=LayerCost(0, 0))
    one_layer = biggest.per_token * tokens + biggest.fixed
    final_norm = (4 * shape.hidden + 4) * tokens if costs else 0
    if ckpt:  # each layer's input; the backward recomputes one layer and works on its gradients
        kept = len(costs) * stream * shape.hidden * tokens + final_norm
        activations = kept + 2 * one_layer
    else:  # every layer's saved tensors; the backward works on one layer's gradients at a time
        kept = sum(c.per_token * tokens + c.fixed for c in costs) + final_norm
        activations = kept + one_layer

    # loss -------------------------------------------------------------------------------------------
    head_bytes = trained_bytes if spec.head_trains else frozen_bytes
    loss = _loss_bytes(cfg, spec, shape, tokens=tokens, stream=stream, compute=compute, head_bytes=head_bytes)

    # overhead and loading -----------------------------------------------------------------------------
    if device.startswith("cuda"):
        overhead, loading = CUDA_CONTEXT, 0
        notes.append("cuda: overhead is the CUDA context; host memory is not counted")
    else:
        overhead = runtime_overhead()
        if source.kind == "alias-import":
            notes.append("the alias's GGUF is imported on first use (once); model loading includes it")
        cast = frozen if frozen_bytes == 2 and not explicit else 0
        loading = _loading_bytes(
            source, total=total, cast=cast, quantised=quantised, weights=weights, optimizer=optimizer
        )
    return MemoryEstimate(
        parameters=total,
        trainable=trainable,
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        activations=activations,
        loss=loss,
        overhead=overhead,
        gradient_checkpointing=ckpt,
        loading=loading,
        activations_kept=kept,
        tokens_per_step=tokens,
        notes=notes,
    )


def _loss_bytes(
    cfg: RunConfig, spec: ModelSpec, shape: Shape, *, tokens: int, stream: int, compute: int, head_bytes: int
) -> int:
    """Output head + cross-entropy at their peak.

    Chunked (lm_loss.LinearCrossEntropy): one chunk's logits buffers (the matmul's output in the
    compute dtype and a float32 one for the softmax, reused by every chunk), the gathered hidden
    states and their gradient, a bf16 cast of a float32 head, a trained head's float32 gradient.
    The model's own loss: the batch's logits in the compute dtype, upcast to float32, and the
    float32 log-softmax kept for the backward pass.
    """
    if cfg.task == "classification":
        return tokens * shape.hidden * 4  # pooled / last-token states and a few labels: small
    vocab = shape.vocab or spec.head_rows
    chunk = cfg.train.loss_chunk
    if not (chunk > 0 and cfg.task in ("sft", "pretrain") and cfg.method.name not in PROMPT_LEARNING):
        return tokens * vocab * (compute + 8)
    extra = 2 * tokens * shape.hidden * stream
    if compute == 2 and head_bytes == 4:  # the chunk loop's bf16 copy of a float32 head
        extra += 2 * spec.head_numel
    if spec.head_trains:
        extra += 4 * spec.head_numel
    per_logit = 4 if compute == 4 else compute + 4  # one buffer, or the matmul's and a float32 one
    return min(chunk, tokens) * vocab * per_logit + extra


def _loading_bytes(
    source: ModelSource, *, total: int, cast: int, quantised: int, weights: int, optimizer: int
) -> int:
    """Memory above the final weights while the model loads, or is cast back at the end (CPU).

    A model folder loads as float32 from a memory-mapped safetensors file; casting the frozen
    weights to bf16 holds both copies at once, and casting them back to float32 after training
    (the optimizer state still held) needs float32 room again. A GGUF is memory-mapped and
    dequantised tensor by tensor into float32 (the file plus two buffers of the largest tensor);
    an alias used for the first time is imported that way before its folder loads.
    """
    peak = 4 * (total - quantised) + 2 * cast + _file_bytes(source.folder, skip_fp32=True)
    if quantised:
        peak = weights + _file_bytes(source.folder)  # quantised tensor by tensor from the mapped file
    if source.kind in ("gguf", "alias-import") and source.gguf is not None:
        gguf_peak = source.gguf.stat().st_size + 2 * 4 * _largest_tensor(source.config) + 4 * total
        peak = max(peak, gguf_peak) if source.kind == "alias-import" else gguf_peak + 2 * cast
    after = weights + 2 * cast + optimizer
    return max(peak - weights, after - weights, 0)


def _file_bytes(folder: Path | None, *, skip_fp32: bool = False) -> int:
    """Size of the safetensors files (touched pages stay resident while they are mapped); zero for
    float32 files when the float32 parameters are those mapped pages themselves."""
    import json
    import struct

    files = sorted(Path(folder).glob("*.safetensors")) if folder is not None else []
    if skip_fp32 and files:
        try:
            with files[0].open("rb") as f:
                header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
            if {v.get("dtype") for k, v in header.items() if k != "__metadata__"} == {"F32"}:
                return 0
        except (OSError, ValueError, struct.error):
            pass
    return sum(f.stat().st_size for f in files)


def _largest_tensor(config: Any) -> int:
    shape = model_shape(config)
    return max(shape.vocab * shape.hidden, shape.hidden * shape.intermediate)


# -- decisions and advice ---------------------------------------------------------------------------
def decide_checkpointing(cfg: RunConfig, device: str, *, limit: int | None = None) -> tuple[bool, str]:
    """Whether to checkpoint activations, and a one-line reason to print.

    true/false are the user's; auto turns it on only when the estimate without it does not fit
    `limit` (default: the memory available on `device` now). Without an estimate (an architecture
    it does not know, a machine that does not say its memory) auto stays off and says why.
    """
    setting = cfg.train.gradient_checkpointing
    if setting != "auto":
        return bool(setting), f"train.gradient_checkpointing: {str(setting).lower()}"
    if cfg.method.name == "prefix":
        return False, "prefix tuning cannot use it"
    try:
        without = estimate_memory(cfg, gradient_checkpointing=False, device=device)
    except EstimateError as err:
        return False, f"no memory estimate for this model: {err}"
    except LmtuneError:
        raise  # the model cannot be found or read: training would stop on it too, with this sentence
    except Exception as err:  # an architecture the estimate's meta build does not handle
        return False, f"no memory estimate for this model ({type(err).__name__}: {err})"
    try:
        limit = available_memory(device) if limit is None else limit
    except ModelError as err:
        return False, f"available memory unknown ({err})"
    if without.fits(limit):
        return False, f"predicted peak {format_bytes(without.peak)} fits in {format_bytes(limit)}"
    with_it = estimate_memory(cfg, gradient_checkpointing=True, device=device)
    return True, (
        f"predicted peak {format_bytes(without.peak)} without it exceeds {format_bytes(limit)}; "
        f"{format_bytes(with_it.peak)} with it"
    )


def runtime_overhead() -> int:
    """The training libraries' resident memory: this process's RSS when it has imported torch (a
    training process asking about checkpointing), else the figure measured once (CPU_RUNTIME),
    so that `lmtune estimate` need not import them to know."""
    if "torch" not in sys.modules:
        return CPU_RUNTIME
    import transformers.trainer  # noqa: F401  training imports it (and accelerate): ~90 MiB to count

    return resident_memory()
