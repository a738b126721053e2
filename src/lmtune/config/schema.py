"""The run configuration: one YAML file, one option name everywhere.

The field names here are the YAML keys, the `--set section.key=value` override names and the
Python API names. Every section forbids unknown keys (the loader turns that into a "did you mean"
message). `lmtune config schema` renders the reference from these fields and descriptions, so a
description is the user's documentation: say what the option does and what values it takes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lmtune.config.distributed import DISTRIBUTED_STRATEGIES, DistributedSection  # noqa: F401 (re-export)
from lmtune.config.preference import PREFERENCE_LOSSES, PreferenceSection  # noqa: F401 (re-exported)
from lmtune.config.rl import RL_BUILTIN_REWARDS, RewardEntry, RLSection  # noqa: F401 (re-export)
from lmtune.config.section import Section
from lmtune.config.tasks import check_formats


class ModelSection(Section):
    name: str = Field(
        "smollm2-135m-instruct",
        description="Model to fine-tune: a built-in alias (smollm2-135m-instruct), a Hugging Face id "
        "(org/name, needs network), a local model folder, or a .gguf file (dequantized on load).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Dtype the weights are loaded in for training. auto: float32 master weights "
        "(bf16 mixed precision is set by train.bf16).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu.")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "lmtune_packed"] = Field(
        "auto",
        description="Attention kernel. auto: flash_attention_2 on CUDA when flash-attn is installed; "
        "lmtune_packed for packed training on CPU (attention computed per sample, SDPA for everything "
        "else); else sdpa. Packed samples stay isolated with each.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped with the model (auto_map in its config.json). Off: such a "
        "model is refused with a message. Turn on only for code you trust; the run records it (summary, "
        "run marker) and later commands loading the run use it.",
    )


TASKS = ("sft", "pretrain", "classification", "preference", "grpo", "rloo")

# Every record format a data file may be read as. Which ones a task accepts is decided by the
# task's loader (lmtune.data.sources); auto detects the format from the field names.
DATA_FORMATS = (
    "auto",
    # sft: conversations
    "openai",
    "sharegpt",
    "alpaca",
    "dolly",
    "prompt_completion",
    # pretrain: raw text
    "text",
    # classification: text (+ text_pair) + label
    "classification",
    # preference: pairs, or KTO single answers with a good/bad label
    "preference",
    "sharegpt_ranking",
    "openai_preference",
    "kto",
)
DATA_FILE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".txt")
DataFormat = Literal[DATA_FORMATS]  # type: ignore[valid-type]


def column_positions(value: Any) -> Any:
    """`columns:` values written as YAML numbers ({label: 0, text: 1}) are positions: the strings
    "0", "1", as `--column label=0` gives them; names and dotted paths stay as they are."""
    if isinstance(value, dict):
        return {
            k: str(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else v
            for k, v in value.items()
        }
    return value


class DatasetEntry(Section):
    """One file of `data.datasets`, with its own format, columns and mixing weight."""

    path: str | None = Field(
        None, description="Data file; relative paths are resolved against the config file's folder."
    )
    name: str | None = Field(None, description="Name of an entry in data.registry (instead of path).")
    format: DataFormat = Field("auto", description="Record format of this file; auto detects it.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Map the format's field names to this file's (as data.columns)."
    )
    _positions = field_validator("columns", mode="before")(column_positions)
    roles: dict[str, str] = Field(
        default_factory=dict,
        description="ShareGPT speaker names used by this file, by role: {user: human, assistant: gpt, "
        "system: system, tool: observation, function_call: function_call} (LLaMA-Factory's *_tag).",
    )
    system: str | None = Field(None, description="System prompt added to this file's records that have none.")
    limit: int | None = Field(None, ge=1, description="Use only the first N records of this file.")
    weight: float = Field(
        1.0,
        gt=0,
        description="Mixing weight. interleave: relative sampling probability; concat: a record-count "
        "multiplier (2 repeats the file twice, 0.5 takes a seeded half).",
    )

    @model_validator(mode="after")
    def _path_or_name(self) -> DatasetEntry:
        if (self.path is None) == (self.name is None):
            raise ValueError(
                "each data.datasets entry needs exactly one of path (a file) or name (a registry entry)"
            )
        return self


class DataSection(Section):
    path: str | None = Field(
        None,
        description="Training data file (json, jsonl, csv, tsv, parquet, txt). Relative paths are "
        "resolved against the config file's folder. For several files use data.datasets.",
    )
    datasets: list[DatasetEntry] = Field(
        default_factory=list,
        description="Several training files mixed together, each {path or name, format, columns, roles, "
        "system, limit, weight}. A plain string is a path when it ends in a data-file extension (.jsonl ...), "
        "otherwise a registry name when data.registry is set.",
    )
    mix: Literal["concat", "interleave"] = Field(
        "concat",
        description="How data.datasets are combined. concat: one after another (weights scale counts); "
        "interleave: records drawn at random in proportion to the weights, seeded by data.seed.",
    )
    mix_stop: Literal["first_exhausted", "all_exhausted"] = Field(
        "first_exhausted",
        description="interleave: stop when the first dataset runs out, or go on (re-using the exhausted "
        "ones) until every dataset has been used in full.",
    )
    registry: str | None = Field(
        None,
        description="A LLaMA-Factory dataset_info.json; data.datasets may then name its entries. Files are "
        "resolved against the registry's folder; hub entries are refused (no download).",
    )
    format: DataFormat = Field(
        "auto", description="Record format of data.path; auto detects it from the field names."
    )
    roles: dict[str, str] = Field(
        default_factory=dict, description="ShareGPT speaker names of data.path by role (see data.datasets)."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map the format's field names to your file's, e.g. {instruction: question, "
        "output: answer}. Dotted paths reach into nested fields (instances.0.input). A CSV/TSV file "
        "without a header row is mapped by position from 0, e.g. {label: 0, text: 1} (classification "
        "and pretrain; as `lmtune data inspect --column label=0 --column text=1`).",
    )
    _positions = field_validator("columns", mode="before")(column_positions)
    system: str | None = Field(None, description="System prompt added to records that have none.")
    on_error: Literal["skip", "fail"] = Field(
        "skip",
        description="skip: invalid records are counted, reported and written to rejects.jsonl; "
        "fail: stop at the first one with its file, line and field.",
    )
    val_path: str | None = Field(None, description="Validation file; if unset, val_size is split off.")
    val_size: float = Field(
        0.0,
        ge=0,
        description="Validation split taken from the training data: a fraction (<1) or a record count (>=1); "
        "pretrain splits documents, or the blocks of a single document.",
    )
    template: str | None = Field(
        None,
        description="Chat template to use instead of the model's own: chatml or alpaca. Needed for "
        "base models that ship no chat template.",
    )
    max_length: int = Field(
        1024, ge=8, description="Samples are truncated to this many tokens (pretrain: the block length)."
    )
    system_merge: Literal["auto", "never"] = Field(
        "auto",
        description="For chat templates without a system role (Gemma; detected by rendering a system "
        "message): auto merges a record's system message into its first user turn (system text, a blank "
        "line, the user text), as the run log says; never stops with an error instead.",
    )
    train_on: Literal["all", "last", "all_tokens"] = Field(
        "all",
        description="Which tokens carry loss. all: every assistant turn (with its end-of-turn token); "
        "last: only the final assistant turn; all_tokens: the whole rendered conversation.",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N records (quick experiments).")
    seed: int = Field(42, description="Seed for the validation split and for mixing datasets.")
    text_split: Literal["document", "line"] = Field(
        "document",
        description="pretrain, .txt files: one document per file, or one per non-empty line.",
    )
    labels: list[str] | None = Field(
        None,
        description="classification: the label set, in the order of the model's outputs. null: "
        "discovered from the training data (sorted). Records with other labels are rejected.",
    )
    packing: bool | Literal["auto"] = Field(
        "auto",
        description="sft: pack samples into max_length rows (best-fit decreasing), each sample attending only "
        "to itself, so no compute is spent on padding. auto: on, except for prefix/prompt/ptuning, whose "
        "virtual tokens must precede every sample.",
    )
    cache: bool = Field(
        True,
        description="sft and pretrain: keep the tokenised, memory-mapped store for later runs, keyed by a hash "
        "of the files, tokenizer and settings ($LMTUNE_CACHE/datasets and /text, default ~/.cache/lmtune). "
        "false: build it in a temporary folder removed when the run ends.",
    )
    group_by_length: bool = Field(
        False,
        description="Without packing: batch samples of similar length together (less padding; "
        "batches are still shuffled).",
    )
    shuffle: bool = Field(
        True,
        description="Shuffle the training samples each epoch. false keeps file order (a file sorted by "
        "label then trains class by class, which is warned about).",
    )
    num_proc: int | None = Field(
        None,
        ge=1,
        description="sft, memory-mapped store (lmtune.datastore): worker processes that tokenise. null: "
        "min(usable cores, 8, records // 5000), at least 1 (a worker costs more than it saves below 5,000 "
        "records).",
    )

    @model_validator(mode="before")
    @classmethod
    def _string_datasets(cls, data: Any) -> Any:
        """`datasets: [alpaca_en_demo, more.jsonl]`: a string with a data-file extension is a path,
        any other a registry name when data.registry is set (else a path)."""
        if isinstance(data, dict) and isinstance(data.get("datasets"), list):

            def entry(d: Any) -> Any:
                if not isinstance(d, str):
                    return d
                is_file = d.lower().endswith(DATA_FILE_SUFFIXES)
                return {"name": d} if data.get("registry") and not is_file else {"path": d}

            data = {**data, "datasets": [entry(d) for d in data["datasets"]]}
        return data


METHODS = (
    "lora",
    "qlora",
    "full",
    "freeze",
    "prefix",
    "prompt",
    "ptuning",
    "adapter",
    "bitfit",
    "ia3",
    "ln_tuning",
)
LORA_FAMILY = ("lora", "qlora")


def _opt(default, methods: tuple[str, ...], description: str, **kw):
    """A method option that only `methods` read; the config refuses it (set to a non-default
    value) under any other method, so no option is ever silently ignored."""
    return Field(default, description=description, json_schema_extra={"methods": list(methods)}, **kw)


class MethodSection(Section):
    name: Literal[METHODS] = Field(  # type: ignore[valid-type]
        "lora",
        description="Fine-tuning method: lora, qlora (LoRA on a 4/8-bit base), full, freeze (last "
        "layers), prefix, prompt, ptuning, adapter (bottleneck), bitfit (biases), ia3, ln_tuning.",
    )
    # LoRA family -----------------------------------------------------------------------------
    r: int = _opt(16, LORA_FAMILY, "LoRA rank.", ge=1)
    alpha: float = _opt(
        32, LORA_FAMILY, "LoRA alpha (scaling = alpha / r, or alpha / sqrt(r) with rsLoRA).", gt=0
    )
    dropout: float = _opt(0.05, LORA_FAMILY, "LoRA dropout.", ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = _opt(
        None,
        (*LORA_FAMILY, "ia3", "ln_tuning"),
        "Modules the method adapts. null: the model family's default (docs/models.md; LoRA: every "
        "attention and MLP projection, MoE experts and routers excluded, all-linear for other "
        "architectures; ia3: keys, values, down projection; ln_tuning: PEFT's per-architecture "
        "defaults). Or a list of module names such as [q_proj, v_proj].",
    )
    use_rslora: bool = _opt(False, LORA_FAMILY, "Rank-stabilised LoRA: scale by alpha / sqrt(r).")
    use_dora: bool = _opt(
        False, LORA_FAMILY, "DoRA: learn a magnitude per output feature besides the LoRA direction."
    )
    lora_plus_ratio: float | None = _opt(
        None, LORA_FAMILY, "LoRA+: the B matrices learn at lr * this ratio (the paper suggests 16).", gt=0
    )
    init: Literal["default", "gaussian", "pissa", "olora"] = _opt(
        "default",
        LORA_FAMILY,
        "LoRA initialisation. default: Kaiming A, zero B; gaussian: Gaussian A; pissa / olora: start "
        "from the principal singular vectors / a QR factorisation of the weight (saved as a plain "
        "LoRA that loads on the original base).",
    )
    modules_to_save: list[str] = _opt(
        [],
        (*LORA_FAMILY, "ia3"),
        "Modules trained in full and saved beside the adapter, e.g. [lm_head, embed_tokens].",
    )
    # QLoRA -------------------------------------------------------------------------------------
    bits: Literal[4, 8] = _opt(4, ("qlora",), "Bits of the quantized base (bitsandbytes).")
    quant_type: Literal["nf4", "fp4"] = _opt("nf4", ("qlora",), "4-bit data type.")
    double_quant: bool = _opt(True, ("qlora",), "Quantize the 4-bit quantization constants too.")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = _opt(
        "auto",
        ("qlora",),
        "Dtype 4-bit layers compute in. auto: bfloat16 where train.bf16 is on, else float32.",
    )
    # Freeze -----------------------------------------------------------------------------------
    trainable_layers: int = _opt(2, ("freeze",), "Train the last N decoder layers.", ge=1)
    extra_modules: list[str] = _opt(
        [],
        ("freeze",),
        "Other modules to train too, by name or dotted-path suffix: lm_head, embed_tokens, norm ...",
    )
    # Prompt learning ---------------------------------------------------------------------------
    num_virtual_tokens: int = _opt(
        20, ("prefix", "prompt", "ptuning"), "Number of virtual tokens learned.", ge=1
    )
    prefix_projection: bool = _opt(
        False, ("prefix",), "Prefix tuning: reparameterise the prefix through a 2-layer MLP."
    )
    encoder_hidden_size: int | None = _opt(
        None,
        ("prefix", "ptuning"),
        "Hidden size of the prefix projection / P-tuning prompt encoder; null: the model's hidden size.",
        ge=1,
    )
    prompt_init: Literal["random", "text"] = _opt(
        "random", ("prompt",), "Prompt tuning: start the virtual tokens random or from prompt_init_text."
    )
    prompt_init_text: str | None = _opt(
        None, ("prompt",), "Text whose token embeddings initialise the prompt (prompt_init: text)."
    )
    encoder: Literal["mlp", "lstm"] = _opt("mlp", ("ptuning",), "P-tuning prompt encoder.")
    # Bottleneck adapters -----------------------------------------------------------------------
    adapter_type: Literal["houlsby", "pfeiffer"] = _opt(
        "pfeiffer",
        ("adapter",),
        "houlsby: an adapter after attention and one after the MLP of every layer; pfeiffer: after the MLP only.",
    )
    reduction_factor: int = _opt(16, ("adapter",), "Bottleneck size = hidden size / this.", ge=1)
    bottleneck_size: int | None = _opt(
        None, ("adapter",), "Bottleneck size; overrides reduction_factor.", ge=1
    )
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = _opt("relu", ("adapter",), "Adapter activation.")

    @model_validator(mode="after")
    def _only_options_of_this_method(self) -> MethodSection:
        for key, field in type(self).model_fields.items():
            methods = (field.json_schema_extra or {}).get("methods")  # type: ignore[union-attr]
            if (
                methods
                and self.name not in methods
                and getattr(self, key) != field.get_default(call_default_factory=True)
            ):
                raise ValueError(
                    f"method.{key} applies to {', '.join(methods)}, not to method.name={self.name}. "
                    f"Remove it, or choose one of those methods"
                    + (" (full fine-tuning cannot train quantized weights)" if key in QUANT_KEYS else "")
                )
        if self.name == "prompt" and self.prompt_init == "text" and not self.prompt_init_text:
            raise ValueError("method.prompt_init: text needs method.prompt_init_text, the text to start from")
        return self

    def options(self) -> dict:
        """The options this method reads (what config.yaml and the run marker record)."""
        return {
            k: v
            for k, v in self.model_dump(mode="json").items()
            if k == "name"
            or self.name in (type(self).model_fields[k].json_schema_extra or {}).get("methods", ())  # type: ignore[union-attr]
        }


QUANT_KEYS = {"bits", "quant_type", "double_quant", "compute_dtype"}


class TrainSection(Section):
    epochs: float = Field(3.0, gt=0, description="Passes over the training data (ignored if max_steps > 0).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps; -1 uses epochs.")
    batch_size: int = Field(4, ge=1, description="Samples per device per forward pass.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps per optimizer step.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0)
    optim: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = Field(
        "adamw",
        description="Optimizer. adamw_8bit keeps its state in 8 bits (bitsandbytes), a quarter of the memory; "
        "paged_adamw_8bit also pages that state to CPU memory on a GPU memory spike (CUDA only), the QLoRA "
        "paper's setting.",
    )
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field("cosine")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps spent warming up.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 disables).")
    seed: int = Field(42)
    bf16: bool | Literal["auto"] = Field(
        "auto", description="bf16 mixed precision; auto turns it on where the CPU/GPU supports it natively."
    )
    log_steps: int = Field(5, ge=1, description="Log loss, learning rate and tokens/s every N steps.")
    eval_steps: int = Field(
        0, ge=0, description="Evaluate on the validation split every N steps (0: at the end only)."
    )
    save_steps: int = Field(
        0, ge=0, description="Save a checkpoint every N steps (0: no intermediate checkpoints)."
    )
    save_total_limit: int = Field(2, ge=1, description="Keep at most this many checkpoints.")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute activations in the backward pass, trading compute for memory. auto: on only "
        "when the memory estimate (lmtune estimate) says the run would not fit otherwise.",
    )
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile the model's decoder. auto: only when the planned run is long enough for "
        "the compile time to pay back (printed with the estimate).",
    )
    bf16_frozen: bool = Field(
        True,
        description="With bf16 on and a method that saves only what it trains (LoRA, adapters, ...): keep the "
        "frozen base weights in bf16 (half the memory, no cast per forward); trained ones stay float32.",
    )
    fast_dropout: bool = Field(
        True,
        description="LoRA dropout on CPU with masks drawn 16 bits per element (a third of the random "
        "draws of torch's dropout; p rounded to a multiple of 1/65536). false: torch's nn.Dropout.",
    )
    fused_lora: bool = Field(
        True,
        description="LoRA linear layers on CPU compute their update in one autograd function (scaling on "
        "the rank-r activations, the add inside the matmul, dropout's bool mask kept instead of the "
        "dropped input). Same update as PEFT's; false: PEFT's forward.",
    )
    loss_chunk: int = Field(
        256,
        ge=0,
        description="Compute the output head and cross-entropy only at trained positions, this many at a "
        "time, never holding full-vocabulary logits for the batch. 0: the model's own loss.",
    )
    liger: bool | Literal["auto"] = Field(
        "auto", description="CUDA: Liger kernels (liger-kernel package). auto: when installed and on CUDA."
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="Experiment trackers, several at once: tensorboard (event files in RUN/tensorboard), "
        "wandb, mlflow (their own environment variables say where: WANDB_MODE, WANDB_DIR, "
        "MLFLOW_TRACKING_URI). A name or a list; none: no tracker.",
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, value: Any) -> Any:
        """`tensorboard`, `tensorboard,wandb` (as --set gives it) or a list; `none` is no tracker."""
        if value is None:
            return []
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            value = [v for v in value if v != "none"]
            return list(dict.fromkeys(value))
        return value


class EvalSection(Section):
    path: str | None = Field(
        None,
        description="Held-out records evaluated before and after training, as `lmtune eval` does: check "
        "jsonl of {prompt, reference, contains?} or any chat/instruction format. The summary shows base "
        "vs tuned answers and metrics side by side; the full report goes to RUN/eval/.",
    )
    metrics: list[str] = Field(
        default_factory=lambda: ["auto"],
        description="What to score: loss, perplexity, exact_match, contains, bleu, rouge, speed; auto = "
        "what the records support.",
    )
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(8, ge=1, description="Prompts generated together.")
    compare_base: bool = Field(True, description="Also answer the prompts with the base model first.")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        from lmtune.eval.evaluate import METRICS

        unknown = [m for m in value if m not in (*METRICS, "auto")]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from auto, {', '.join(METRICS)}")
        return value


class OutputSection(Section):
    dir: str | None = Field(None, description="Run directory; default runs/<name>.")
    name: str | None = Field(None, description="Run name; default: the config file's name.")
    overwrite: bool = Field(False, description="Allow writing into a non-empty run directory.")


class RunConfig(Section):
    task: Literal[TASKS] = Field(  # type: ignore[valid-type]
        "sft",
        description="sft: chat/instruction fine-tuning; pretrain: continued pretraining on raw text; "
        "classification: a label per text; preference: chosen/rejected pairs (DPO family) or KTO; "
        "grpo, rloo: learning from rewards on sampled answers (see the rl section).",
    )
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    method: MethodSection = Field(default_factory=MethodSection)
    train: TrainSection = Field(default_factory=TrainSection)
    preference: PreferenceSection = Field(default_factory=PreferenceSection)
    rl: RLSection = Field(default_factory=lambda: RLSection())
    eval: EvalSection = Field(default_factory=EvalSection)
    output: OutputSection = Field(default_factory=OutputSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.data.path is None and not self.data.datasets:
            raise ValueError("data.path (one training file) or data.datasets (several) is required")
        if self.data.path is not None and self.data.datasets:
            raise ValueError(
                "set data.path or data.datasets, not both: add the file to data.datasets as one more entry"
            )
        if any(d.name for d in self.data.datasets) and not self.data.registry:
            raise ValueError(
                "a data.datasets entry has a name but data.registry is not set: point it at the dataset_info.json"
            )
        check_formats(self.task, self.data.format, [d.format for d in self.data.datasets])
        if self.data.labels is not None and self.task != "classification":
            raise ValueError(
                f"data.labels (the label set) applies to task: classification, not task: {self.task}"
            )
        if self.data.text_split != "document" and self.task != "pretrain":
            raise ValueError(f"data.text_split applies to task: pretrain (.txt files), not task: {self.task}")
        if self.task != "preference" and self.preference != PreferenceSection():
            raise ValueError(f"the preference section applies to task: preference, not task: {self.task}")
        if self.task == "classification" and self.eval.path:
            raise ValueError(
                "eval.path (generation checks) does not apply to task: classification; "
                "its validation metrics are accuracy, macro-F1 and the confusion matrix"
            )
        if self.method.name == "prefix" and self.train.gradient_checkpointing is True:
            raise ValueError(
                "train.gradient_checkpointing does not work with method.name=prefix: prefix tuning feeds "
                "its vectors through the key/value cache, which checkpointed layers do not use. Set "
                "train.gradient_checkpointing: false, or use prompt, ptuning or lora"
            )
        if self.data.packing is True and self.method.name in ("prefix", "prompt", "ptuning"):
            raise ValueError(
                f"data.packing: true does not work with method.name={self.method.name}: its virtual tokens "
                "must precede every sample, and a packed row holds several. Set data.packing: auto (off for "
                "this method) or false"
            )
        return self

    @model_validator(mode="after")
    def _check_rl(self) -> RunConfig:
        if self.task not in ("grpo", "rloo"):
            if self.rl != RLSection():
                raise ValueError(f"the rl section applies to task: grpo or rloo, not task: {self.task}")
            return self
        if not self.rl.rewards:
            raise ValueError(
                f"task: {self.task} needs rl.rewards: at least one reward function (a built-in such as "
                "numeric_match, or module:function)"
            )
        per_step = self.train.batch_size * self.train.grad_accum
        if per_step % self.rl.num_generations:
            raise ValueError(
                f"train.batch_size x train.grad_accum ({per_step}) counts sampled answers and must be a multiple "
                f"of rl.num_generations ({self.rl.num_generations}), the answers per prompt. Set train.batch_size "
                f"to {self.rl.num_generations} (or a multiple), or change rl.num_generations"
            )
        names = [r.name or r.reward.rpartition(":")[2] for r in self.rl.rewards]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rl.rewards: the name(s) {dupes} appear twice; give each entry its own name")
        if self.data.datasets:
            raise ValueError(f"task: {self.task} reads one prompt file: use data.path, not data.datasets")
        return self
