"""The method interface and its registry.

A run calls, in order: `load_kwargs` (extra `from_pretrained` arguments, e.g. 4-bit loading),
`check` (refuse a model the method cannot train, before any time is spent), `prepare` (the model
to train, with exactly the intended parameters trainable), `save` (what was trained, into the run
directory). `lmtune chat` and the other verbs call `load_kwargs` and `load` to rebuild the model.

`prepare` and `load` take the run's `task`. For task: classification the model is a
*ForSequenceClassification with a new, randomly started head (`classifier` / `score`): every
method trains that head in full besides its own parameters, and saves it with them.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from lmtune.errors import ConfigError


class Method(ABC):
    name: ClassVar[str]
    #: True when the trained delta can be folded into the base weights (a plain model comes out).
    mergeable: ClassVar[bool]
    #: True when the run directory holds only the trained delta and needs the base to load.
    needs_base: ClassVar[bool]
    #: For methods that cannot be merged: why, said to a user who asks for a merge.
    not_mergeable_because: ClassVar[str] = ""

    def load_kwargs(self, opts: Any, *, bf16: bool) -> dict[str, Any]:
        """Extra `from_pretrained` keyword arguments for the base (training and reloading alike)."""
        return {}

    def check(self, model: Any, opts: Any) -> None:  # noqa: B027  (most methods accept any model)
        """Raise ConfigError when this method cannot train `model` as configured.

        Runs right after the base is loaded, before anything else runs it, so a method may also
        set the loaded base up here.
        """

    @abstractmethod
    def prepare(self, model: Any, opts: Any, *, task: str = "sft") -> Any:
        """Return the model to train, with exactly the intended parameters trainable."""

    def save(self, model: Any, out_dir: Path, *, state_dict: dict[str, Any] | None = None) -> None:
        """Write what was trained. `state_dict`: the model's full state gathered from a sharded
        (FSDP / ZeRO-3) run, whose in-memory parameters are only this process's shards."""
        model.save_pretrained(out_dir, state_dict=state_dict)

    @abstractmethod
    def load(self, base: Any, run_dir: Path, *, task: str = "sft") -> Any:
        """Put what was trained back on `base` (methods that save full weights return it as is)."""


# PEFT reads transformers' deprecated `is_gradient_checkpointing`; the warning is theirs, not the user's.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


class PeftMethod(Method):
    """A method PEFT implements: build its config, wrap the model, save and load PEFT's layout
    (adapter_config.json + adapter_model.safetensors), so `PeftModel.from_pretrained` loads it anywhere."""

    needs_base = True

    @abstractmethod
    def peft_config(self, model: Any, opts: Any, task: str = "sft") -> Any:
        """The PEFT config for `model`, the method options and the task (see `peft_task_type`)."""

    def fix(self, model: Any) -> Any:
        """Repair what PEFT gets wrong for this method, on the prepared and on the loaded model."""
        return model

    def prepare(self, model: Any, opts: Any, *, task: str = "sft") -> Any:
        from peft import get_peft_model

        return self.fix(get_peft_model(model, self.peft_config(model, opts, task)))

    def load(self, base: Any, run_dir: Path, *, task: str = "sft") -> Any:
        from peft import PeftModel

        # The saved adapter_config.json names its task type; PEFT picks the wrapper from it.
        return self.fix(PeftModel.from_pretrained(base, str(run_dir)))


def peft_task_type(task: str) -> Any:
    """PEFT's task type: SEQ_CLS wraps a classifier so its head (`classifier`/`score`) is trained in
    full and saved with the adapter (PEFT adds it to modules_to_save); CAUSAL_LM otherwise."""
    from peft import TaskType

    return TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM


def head_parameter_names(model: Any) -> list[str]:
    """Names of the classification head's parameters ([] for a model that is not a classifier)."""
    from lmtune.models.classifier import head_module, is_classifier

    found = head_module(model) if is_classifier(model) else None
    if found is None:
        return []
    return [f"{found[0]}.{n}" for n, _ in found[1].named_parameters()]


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    _REGISTRY[cls.name] = cls
    return cls


# Methods that share a module with another one.
MODULES = {
    "qlora": "lora",
    "prompt": "prompt_learning",
    "prefix": "prompt_learning",
    "ptuning": "prompt_learning",
    "ia3": "peft_small",
    "ln_tuning": "peft_small",
}


def get_method(name: str) -> Method:
    import importlib

    from lmtune.config.schema import METHODS

    if name in METHODS:
        importlib.import_module(f"lmtune.methods.{MODULES.get(name, name)}")  # registers itself
    if name not in _REGISTRY:
        raise ConfigError(f"Unknown method.name '{name}'. Available: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]()


def ensure_mergeable(name: str) -> None:
    """Refuse a merge, with the reason, for methods whose training cannot be folded into weights."""
    method = get_method(name)
    if not method.mergeable:
        raise ConfigError(
            f"A {name} run cannot be merged into its base model: {method.not_mergeable_because} "
            "Load the run directory itself (lmtune chat / generate / serve take it as is)."
        )


def method_options(name: str, options: dict[str, Any] | None = None) -> Any:
    """The validated `method` section for a run (from its marker's recorded options)."""
    from lmtune.config.schema import MethodSection

    return MethodSection(**{**(options or {}), "name": name})
