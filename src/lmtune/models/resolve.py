"""Turn what the user wrote after `model:` into a `ModelRef` the loader can use.

Accepted forms, checked in this order: a built-in alias, a `.gguf` file, a local model folder,
a Hugging Face hub id (`org/name`). Anything else is a mistake and gets a sentence listing the
forms. Nothing here imports torch or transformers, so the CLI stays fast; only the first use of
an alias imports its GGUF (once, into a cache folder) and pays for them.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from lmtune.errors import ModelError
from lmtune.models.aliases import ALIASES, alias_folder_path, alias_gguf_path, get_alias

RUN_MARKER = "lmtune_run.json"
ADAPTER_CONFIG = "adapter_config.json"
# `org/name`: hub ids allow letters, digits, '-', '_', '.'; neither part starts with '.' or '-'.
_HUB_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*/[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


@dataclass
class ModelRef:
    """A resolved model reference: everything `from_pretrained` needs, plus names for messages."""

    spec: str  # what the user wrote
    kind: str  # "alias" | "gguf" | "folder" | "hub"
    path: str  # folder path or hub id to pass to from_pretrained
    gguf_file: str | None  # file name inside `path` when loading straight from a GGUF
    display: str  # short human name

    @property
    def is_local(self) -> bool:
        """True when loading must not touch the network."""
        return self.kind != "hub"


def lmtune_home() -> Path:
    """Root of lmtune's caches: $LMTUNE_HOME, else ~/.cache/lmtune."""
    return Path(os.environ.get("LMTUNE_HOME") or "~/.cache/lmtune").expanduser()


def alias_cache_dir(name: str, gguf_path: Path) -> Path:
    """Cache folder for an alias's imported GGUF, keyed on the file so a new wheel re-imports."""
    stat = gguf_path.stat()
    key = hashlib.sha256(repr((stat.st_size, gguf_path.name, stat.st_mtime_ns)).encode()).hexdigest()[:12]
    return lmtune_home() / "models" / f"{get_alias(name).name}-{key}"


def accepted_forms() -> str:
    """The sentence every resolution error ends with."""
    return (
        "A model can be: a built-in alias ("
        + ", ".join(sorted(ALIASES))
        + "), a .gguf file, a local model folder (with config.json and weights), "
        "or a Hugging Face hub id such as Qwen/Qwen2.5-0.5B-Instruct."
    )


def resolve_model_ref(spec: str, *, use_cache: bool = True) -> ModelRef:
    """Resolve `spec`; a ModelError says what was wrong and which forms are accepted."""
    text = str(spec).strip()
    if not text:
        raise ModelError("No model given. " + accepted_forms())
    if text.lower() in ALIASES:
        return _resolve_alias(text, use_cache=use_cache)

    path = Path(text).expanduser()
    if text.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}. " + accepted_forms())
        path = path.resolve()
        return ModelRef(spec=text, kind="gguf", path=str(path.parent), gguf_file=path.name, display=path.name)
    if path.is_dir():
        return _resolve_folder(text, path.resolve())
    if path.is_file():
        raise ModelError(
            f"{path} is a file, not a model. Pass the folder that holds config.json and the weights, "
            "or a .gguf file."
        )
    if _HUB_ID.match(text) and not text.startswith(("./", "../", "~")):
        return ModelRef(spec=text, kind="hub", path=text, gguf_file=None, display=text)
    raise ModelError(
        f"Cannot find the model '{text}': no such file or folder.{_suggest(text)} " + accepted_forms()
    )


def _suggest(text: str) -> str:
    close = difflib.get_close_matches(text.lower(), list(ALIASES), n=1, cutoff=0.6)
    return f" Did you mean the alias '{close[0]}'?" if close else ""


def _resolve_folder(text: str, folder: Path) -> ModelRef:
    if (folder / RUN_MARKER).is_file() or (folder / ADAPTER_CONFIG).is_file():
        raise ModelError(
            f"{folder} is an lmtune run or adapter directory, not a base model folder. "
            "Pass the base model it was trained from, or the run directory to a command that takes runs."
        )
    if not (folder / "config.json").is_file():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        hint = f" It holds {ggufs[0]}: pass that file instead." if ggufs else ""
        raise ModelError(
            f"{folder} is not a model folder: it has no config.json. A Hugging Face model folder holds "
            "config.json, the weights (model.safetensors or shards) and the tokenizer files, as written "
            f"by save_pretrained.{hint}"
        )
    return ModelRef(spec=text, kind="folder", path=str(folder), gguf_file=None, display=folder.name)


def _resolve_alias(text: str, *, use_cache: bool) -> ModelRef:
    alias = get_alias(text)
    if alias.folder_name:  # a ready model folder inside the package: used in place
        folder = alias_folder_path(alias.name)
        return ModelRef(spec=text, kind="alias", path=str(folder), gguf_file=None, display=alias.name)
    gguf = alias_gguf_path(alias.name)
    if not use_cache:
        return ModelRef(
            spec=text, kind="alias", path=str(gguf.parent), gguf_file=gguf.name, display=alias.name
        )
    cache = alias_cache_dir(alias.name, gguf)
    if not (cache / "config.json").is_file():
        _import_into_cache(alias.name, gguf, cache)
    return ModelRef(spec=text, kind="alias", path=str(cache), gguf_file=None, display=alias.name)


def _import_into_cache(name: str, gguf: Path, cache: Path) -> None:
    """Import once. `import_gguf` writes a temp folder beside `cache` and renames it into place,
    so an interrupted import leaves nothing that looks finished; a concurrent one that wins the
    race is simply used."""
    import time

    from lmtune.models.gguf_import import import_gguf

    cache.parent.mkdir(parents=True, exist_ok=True)
    if cache.is_dir() and not any(cache.iterdir()):
        cache.rmdir()
    elif cache.exists():  # a folder without config.json: not ours to trust, start again
        import shutil

        shutil.rmtree(cache)
    print(
        f"Importing {name} from its GGUF into {cache} (once; later runs reuse it) ...",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    try:
        import_gguf(gguf, cache)
    except (ModelError, OSError):
        if (cache / "config.json").is_file():  # another process finished first
            return
        raise
    print(f"Imported {name} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
