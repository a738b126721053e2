"""The method interface and its registry.

A run calls, in order: `load_kwargs` (extra `from_pretrained` arguments, e.g. 4-bit loading),
`check` (refuse a model the method cannot train, before any time is spent), `prepare` (the model
to train, with exactly the intended parameters trainable), `save` (what was trained, into the run
directory). `lmtune chat` and the other verbs call `load_kwargs` and `load` to rebuild the model.
"""

from __future__ import annotations

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
    def prepare(self, model: Any, opts: Any) -> Any:
        """Return the model to train, with exactly the intended parameters trainable."""

    def save(self, model: Any, out_dir: Path) -> None:
        model.save_pretrained(out_dir)

    @abstractmethod
    def load(self, base: Any, run_dir: Path) -> Any:
        """Put what was trained back on `base` (methods that save full weights return it as is)."""


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
