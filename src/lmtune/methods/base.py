"""The method interface and its registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from lmtune.errors import ConfigError


class Method(ABC):
    name: ClassVar[str]
    mergeable: ClassVar[bool]
    #: True when the run directory holds only the trained delta (an adapter) and needs the base.
    needs_base: ClassVar[bool]

    @abstractmethod
    def prepare(self, model: Any, cfg: Any) -> Any:
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


def get_method(name: str) -> Method:
    from lmtune.methods import full, lora  # noqa: F401  (modules register themselves)

    if name not in _REGISTRY:
        raise ConfigError(f"Unknown method.name '{name}'. Available: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]()
