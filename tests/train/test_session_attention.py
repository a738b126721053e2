"""Session.set_attention: the planned kernel, with sdpa when a model refuses registered kernels."""

from __future__ import annotations

from types import SimpleNamespace

from tests.conftest import tiny_llama

from lmtune.train.plan import SpeedPlan
from lmtune.train.session import Session


class Recorder:
    def __init__(self):
        self.lines: list[str] = []

    def print(self, line: str) -> None:
        self.lines.append(line)


def session(attn: str) -> SimpleNamespace:
    return SimpleNamespace(plan=SpeedPlan(attn_implementation=attn), console=Recorder())


def test_lmtune_packed_is_registered_and_set():
    model, s = tiny_llama(100), session("lmtune_packed")
    Session.set_attention(s, model)
    assert model.config._attn_implementation == "lmtune_packed"


def test_a_model_refusing_it_trains_with_sdpa():
    class Refusing:
        config = SimpleNamespace(_attn_implementation="eager")
        calls: list[str] = []

        def set_attn_implementation(self, name):
            self.calls.append(name)
            if name == "lmtune_packed":
                raise ValueError(
                    "does not support an attention implementation through the AttentionInterface"
                )
            self.config._attn_implementation = name

    model, s = Refusing(), session("lmtune_packed")
    Session.set_attention(s, model)
    assert model.calls == ["lmtune_packed", "sdpa"] and model.config._attn_implementation == "sdpa"
    assert s.plan.attn_implementation == "sdpa" and "refuses lmtune_packed" in s.console.lines[0]
