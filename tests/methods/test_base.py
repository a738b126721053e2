"""The registry: every configurable method is registered, mergeability is declared and explained."""

from __future__ import annotations

import pytest

from lmtune.config.schema import METHODS
from lmtune.errors import ConfigError
from lmtune.methods.base import ensure_mergeable, get_method, method_options

NOT_MERGEABLE = {"prefix", "prompt", "ptuning", "adapter"}


@pytest.mark.parametrize("name", METHODS)
def test_every_config_method_is_registered(name):
    method = get_method(name)
    assert method.name == name
    assert method.mergeable is (name not in NOT_MERGEABLE)


@pytest.mark.parametrize("name", sorted(NOT_MERGEABLE))
def test_merge_is_refused_with_the_reason(name):
    with pytest.raises(ConfigError) as err:
        ensure_mergeable(name)
    msg = str(err.value)
    assert f"A {name} run cannot be merged" in msg
    assert get_method(name).not_mergeable_because in msg and len(get_method(name).not_mergeable_because) > 20


@pytest.mark.parametrize("name", sorted(set(METHODS) - NOT_MERGEABLE))
def test_mergeable_methods_pass(name):
    ensure_mergeable(name)


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(ConfigError, match="Available: adapter, bitfit"):
        get_method("lorax")


def test_method_options_rebuild_the_section_from_a_marker():
    opts = method_options("qlora", {"name": "qlora", "r": 4, "bits": 8})
    assert (opts.name, opts.r, opts.bits, opts.quant_type) == ("qlora", 4, 8, "nf4")
    assert method_options("full").name == "full"
