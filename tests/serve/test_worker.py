"""One generation thread for every served model, and loading in a thread that exits (engine/worker.py:
a second OpenMP team in the process slows CPU decoding). Checked on real tiny models: where each
forward runs, that answers stay equal to `generate_replies`, and that closing one model leaves the
other served."""

from __future__ import annotations

import threading

import pytest

from lmtune.errors import ConfigError
from lmtune.infer.generate import GenerationOptions, generate_replies
from lmtune.serve.engine import Outcome
from lmtune.serve.engine.worker import in_fresh_thread
from lmtune.serve.server import load_slots

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HELLO = [{"role": "user", "content": "hello"}]


def reply(slot, messages, tokens: int = 6) -> str:
    options = GenerationOptions(max_new_tokens=tokens)
    return "".join(slot.generate(slot.chat_prompt(messages), options, strip=True, outcome=Outcome()))


def test_two_models_loaded_off_the_main_thread_and_generated_by_one_thread(
    tiny_model_dir, tiny_qwen2_dir, monkeypatch
):
    import lmtune.run.load as load_module

    loaded_in: list[str] = []
    real_load = load_module.load_target

    def recording_load(*args, **kwargs):
        loaded_in.append(threading.current_thread().name)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(load_module, "load_target", recording_load)
    llama, qwen = load_slots([str(tiny_model_dir), str(tiny_qwen2_dir)])
    assert loaded_in == ["lmtune-load", "lmtune-load"]
    assert llama.scheduler is not qwen.scheduler and llama.scheduler.worker is qwen.scheduler.worker

    ran_in: set[str] = set()
    for slot in (llama, qwen):
        slot.model.register_forward_pre_hook(lambda *_: ran_in.add(threading.current_thread().name))
    try:
        for slot in (llama, qwen):
            alone = generate_replies(slot.model, slot.tokenizer, [HELLO], GenerationOptions(max_new_tokens=6))
            ran_in.clear()
            assert reply(slot, HELLO) == alone[0]
            assert ran_in == {"lmtune-generation"}
        llama.scheduler.close()  # the other model is still served by the same thread
        assert reply(qwen, HELLO) == reply(qwen, HELLO)
        with pytest.raises(RuntimeError, match="shutting down"):
            reply(llama, HELLO)
    finally:
        llama.scheduler.close()
        qwen.scheduler.close()
    assert not qwen.scheduler.worker.running()  # the last one closed: the thread ended


def test_in_fresh_thread_hands_back_the_result_or_the_error():
    assert in_fresh_thread(lambda: threading.current_thread().name) == "lmtune-load"

    def fails():
        raise ConfigError("no such model")

    with pytest.raises(ConfigError, match="no such model"):
        in_fresh_thread(fails)
