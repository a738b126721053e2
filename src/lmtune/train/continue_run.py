"""`model.name` naming a previous run directory: its trained weights become the starting point.

The typical use is two stages, SFT then DPO: the second run starts from the first run's adapter
and trains it further, and saves an adapter for the *original* base model, so the new run loads
like any other (`load_target`: base + adapter). How the previous run is picked up depends on its
method:

- PEFT methods (lora, qlora, ia3, ln_tuning, prompt, prefix, ptuning): the original base (with the
  parent's loading options, e.g. 4-bit for qlora) plus the parent's adapter, loaded trainable;
- full, freeze: the run directory is a whole model; it is loaded as is, and freeze marks the same
  layers trainable again;
- bitfit, adapter: the original base with the parent's trained biases / bottleneck adapters.

The method must be the parent's, and its options (rank, target modules, ...) come from the
parent: they are what the weights were built with. The tokenizer and chat template come from the
parent run directory (`Session.model_ref`). With preference training the reference model is then
the parent's policy (TRL copies the starting adapter as its "ref" adapter; other methods get a
frozen copy of the loaded model), not the raw base.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError
from lmtune.run.layout import read_marker


def load_previous_run(
    session: Any, run_dir: str, *, dtype: str, loader: Any = None, **kwargs: Any
) -> tuple[Any, dict[str, Any]]:
    """(model ready to train, the parent's marker). `kwargs` are extra `from_pretrained` arguments;
    the method's own loading options are recomputed from the parent's recorded options."""
    from lmtune.methods.base import PeftMethod, get_method, method_options
    from lmtune.models.load import load_causal_lm
    from lmtune.models.resolve import ModelRef, resolve_model_ref

    cfg = session.cfg
    marker = read_marker(run_dir)
    parent_method = marker.get("method")
    parent_task = marker.get("task", "sft")
    if "classification" in (cfg.task, parent_task):
        raise ConfigError(
            f"model.name is the run {run_dir} (task {parent_task}); continuing from a run is supported "
            f"between sft, pretrain and preference runs, not for task: classification (its model has a "
            f"label head). Start from the base model {marker.get('base_model')} instead."
        )
    if cfg.method.name != parent_method:
        raise ConfigError(
            f"model.name is the run {run_dir}, trained with method {parent_method}, but this config asks "
            f"for method {cfg.method.name}. A run continues with its own method: set method.name: "
            f"{parent_method} (its options come from that run), or start from the base model "
            f"{marker.get('base_model')} to use {cfg.method.name}."
        )
    method = get_method(parent_method)
    opts = method_options(parent_method, marker.get("method_options"))
    if cfg.method.options() != opts.options():
        session.console.print(
            f"[yellow]Method options come from the run {run_dir} (what its weights were built with): "
            f"{opts.options()}; the method options in this config are not used.[/]"
        )
    kw = {**kwargs, **method.load_kwargs(opts, bf16=session.bf16)}
    if marker.get("trust_remote_code"):  # the parent ran its base model's own code: so must this run
        kw["trust_remote_code"] = True
    load = loader or load_causal_lm
    root = Path(run_dir)
    if not method.needs_base:  # full, freeze: a whole model folder
        own = ModelRef(spec=str(root), kind="folder", path=str(root), gguf_file=None, display=root.name)
        model = load(own, dtype=dtype, device=session.device, **kw)
        method.check(model, opts)
        model = method.prepare(model, opts)
    else:
        base = load(resolve_model_ref(marker["base_model"]), dtype=dtype, device=session.device, **kw)
        method.check(base, opts)
        if isinstance(method, PeftMethod):
            model = _peft_trainable(method, base, root)
        elif parent_method == "bitfit":
            model = method.prepare(method.load(base, root), opts)
        elif parent_method == "adapter":
            from lmtune.methods.adapter import adapter_state

            model = method.load(base, root)
            trainable = set(adapter_state(model))
            for name, param in model.named_parameters():
                param.requires_grad_(name in trainable)
        else:
            raise ConfigError(
                f"continuing a {parent_method} run is not supported; start from its base model "
                f"{marker.get('base_model')} instead."
            )
    session.console.print(
        f"Starting from run {run_dir} ({parent_method} on {marker.get('base_model')}, "
        f"task {marker.get('task')}); this run saves {parent_method} weights for that base."
    )
    return model, marker


def _peft_trainable(method: Any, base: Any, run_dir: Path) -> Any:
    """The parent's adapter on `base`, trainable (PEFT loads adapters frozen unless told otherwise)."""
    from peft import PeftModel

    if method.name == "qlora":
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    try:
        return method.fix(PeftModel.from_pretrained(base, str(run_dir), is_trainable=True))
    except pickle.UnpicklingError as err:  # an adapter_model.bin with more than tensors
        from lmtune.models.load import pickle_refused

        raise pickle_refused(f"the adapter of run {run_dir.name}", run_dir) from err
