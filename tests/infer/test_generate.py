"""Generation: batching, masks, template, seeds, stop strings, token limits and streaming.

The conftest tiny model has an untied random output head, so greedy replies are long, varied and
depend on the prompt (checks below also assert that, so none passes vacuously).
"""

from __future__ import annotations

import pytest
import torch

from lmtune.errors import ConfigError, ModelError
from lmtune.infer.generate import (
    GenerationOptions,
    _eos_ids,
    _held_back,
    cut_at_stop,
    generate_replies,
    render_prompt,
    stream_reply,
)

CONVERSATIONS = [
    [{"role": "user", "content": "hello"}],
    [{"role": "user", "content": "Tell me a long story about a cat, a dog and a very patient goldfish."}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What is the capital of France?"},
    ],
]
GREEDY = GenerationOptions(max_new_tokens=16)


@pytest.fixture
def record_generate(tiny_model_and_tokenizer, monkeypatch):
    """Wrap `model.generate` to record its input ids and output ids."""
    model, _ = tiny_model_and_tokenizer
    calls: list[dict] = []
    real = model.generate

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append({"input_ids": kwargs["input_ids"], "output": out, "kwargs": kwargs})
        return out

    monkeypatch.setattr(model, "generate", wrapper)
    return calls


def test_batched_greedy_equals_one_at_a_time(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    side = tok.padding_side
    batched = generate_replies(model, tok, CONVERSATIONS, GREEDY, batch_size=3)  # a padded batch of 3, then 1
    alone = [generate_replies(model, tok, [c], GREEDY)[0] for c in CONVERSATIONS]
    assert batched == alone
    assert all(batched) and len(set(batched)) > 1  # non-vacuous: real, prompt-dependent replies
    assert tok.padding_side == side  # restored


def test_missing_pad_token_is_handled_and_restored(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    expected = generate_replies(model, tok, CONVERSATIONS[:2], GREEDY)
    saved = tok.pad_token
    tok.pad_token = None
    try:
        assert generate_replies(model, tok, CONVERSATIONS[:2], GREEDY) == expected
        assert tok.pad_token is None
    finally:
        tok.pad_token = saved


def test_greedy_is_deterministic_and_restores_training_mode(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    model.train()
    try:
        first = generate_replies(model, tok, CONVERSATIONS, GREEDY)
        assert model.training
        assert generate_replies(model, tok, CONVERSATIONS, GREEDY) == first
    finally:
        model.eval()


def test_seeded_sampling_reproducible_and_prompt_uses_the_template(tiny_model_and_tokenizer, record_generate):
    model, tok = tiny_model_and_tokenizer
    conv = [CONVERSATIONS[0]]
    sample = GenerationOptions(max_new_tokens=16, temperature=1.0, top_k=0, top_p=1.0, seed=7)
    a = generate_replies(model, tok, conv, sample)
    b = generate_replies(model, tok, conv, sample)
    other_seed = generate_replies(
        model, tok, conv, GenerationOptions(max_new_tokens=16, temperature=1.0, seed=8)
    )
    assert a == b
    assert a != other_seed
    assert a != generate_replies(model, tok, conv, GREEDY)
    assert record_generate[0]["kwargs"]["do_sample"] is True

    ids = record_generate[0]["input_ids"][0].tolist()
    seen = tok.decode(ids)
    assert seen == render_prompt(tok, conv[0])
    assert "<|im_start|>user\nhello<|im_end|>" in seen
    assert seen.endswith("<|im_start|>assistant\n")
    assert "You are a helpful AI assistant named SmolLM" in seen  # the template's default system turn
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == im_start and ids[1] != im_start  # no BOS added on top of the template's own


def test_stop_strings_cut_the_reply(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    conv = [CONVERSATIONS[1]]
    full = generate_replies(model, tok, conv, GREEDY)[0]
    words = full.split()
    assert len(words) >= 4, full
    stop = words[len(words) // 2]
    expected = full[: full.find(stop)].strip()
    assert expected and len(expected) < len(full)

    cut = generate_replies(model, tok, conv, GenerationOptions(max_new_tokens=16, stop=[stop]))[0]
    assert cut == expected
    # The earliest of several stop strings wins, whatever their order in the list.
    later = words[-1]
    assert full.find(later) > full.find(stop)
    opts = GenerationOptions(max_new_tokens=16, stop=[later, stop])
    assert generate_replies(model, tok, conv, opts)[0] == expected
    # Streaming applies the same cut, including a stop string that starts with a space.
    spaced = GenerationOptions(max_new_tokens=16, stop=[" " + stop])
    assert "".join(stream_reply(model, tok, conv[0], spaced)) == generate_replies(model, tok, conv, spaced)[0]


def test_no_bos_is_added_on_top_of_the_template(tiny_model_and_tokenizer, record_generate, monkeypatch):
    """With a tokenizer that adds BOS by default, the prompt still starts with exactly one."""
    model, tok = tiny_model_and_tokenizer
    monkeypatch.setattr(tok, "add_bos_token", True)
    assert tok("hi").input_ids[0] == tok.bos_token_id  # the setting is live
    generate_replies(model, tok, [CONVERSATIONS[0]], GREEDY)
    ids = record_generate[-1]["input_ids"][0].tolist()
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


def test_stream_releases_text_held_back_for_a_stop_string_that_never_completes(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    conv = CONVERSATIONS[0]
    full = generate_replies(model, tok, [conv], GREEDY)[0]
    opts = GenerationOptions(max_new_tokens=16, stop=[full.split()[-1] + "\u2603never"])
    assert generate_replies(model, tok, [conv], opts)[0] == full
    assert "".join(stream_reply(model, tok, conv, opts)) == full


def test_max_new_tokens_is_respected(tiny_model_and_tokenizer, record_generate):
    model, tok = tiny_model_and_tokenizer
    for n in (1, 5, 12):
        (reply,) = generate_replies(model, tok, [CONVERSATIONS[0]], GenerationOptions(max_new_tokens=n))
        call = record_generate[-1]
        new = call["output"].shape[1] - call["input_ids"].shape[1]
        assert new == n  # this model never emits eos, so the limit is what stops it
        assert reply


def test_every_eos_id_stops_generation(tiny_model_and_tokenizer, record_generate, monkeypatch):
    """A model whose generation_config names an extra end id (e.g. <|endoftext|>) must stop on it too."""
    model, tok = tiny_model_and_tokenizer
    generate_replies(model, tok, [CONVERSATIONS[0]], GREEDY)
    call = record_generate[-1]
    new_ids = call["output"][0, call["input_ids"].shape[1] :].tolist()
    k = next(i for i in range(2, len(new_ids)) if new_ids[i] not in new_ids[:i])

    monkeypatch.setattr(model.generation_config, "eos_token_id", [new_ids[k]])
    assert _eos_ids(model, tok) == [tok.eos_token_id, new_ids[k]]
    (reply,) = generate_replies(model, tok, [CONVERSATIONS[0]], GREEDY)
    assert reply == tok.decode(new_ids[:k], skip_special_tokens=True).strip()


def test_stream_reply_joins_to_the_greedy_reply(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    for conv in CONVERSATIONS[:3]:
        pieces = list(stream_reply(model, tok, conv, GREEDY))
        assert len(pieces) > 1
        assert "".join(pieces) == generate_replies(model, tok, [conv], GREEDY)[0]


def test_closing_a_stream_early_ends_its_thread(tiny_model_and_tokenizer):
    import threading

    model, tok = tiny_model_and_tokenizer
    before = threading.active_count()
    stream = stream_reply(model, tok, CONVERSATIONS[1], GenerationOptions(max_new_tokens=200))
    assert next(stream)
    stream.close()
    assert threading.active_count() == before


def test_render_prompt_rejects_a_conversation_not_ending_with_user(smollm2_tokenizer):
    with pytest.raises(ValueError, match="end with a user message"):
        render_prompt(
            smollm2_tokenizer, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
        )
    with pytest.raises(ValueError, match="at least one message"):
        render_prompt(smollm2_tokenizer, [])


def test_render_prompt_without_a_chat_template_is_a_model_error():
    class NoTemplate:
        chat_template = None

    with pytest.raises(ModelError, match="no chat template"):
        render_prompt(NoTemplate(), [{"role": "user", "content": "hi"}])


def test_stop_helpers():
    assert cut_at_stop("abc STOP def", ["STOP"]) == "abc "
    assert cut_at_stop("abc", ["", "x"]) == "abc"
    assert cut_at_stop("a.b!c", ["!", "."]) == "a"
    assert _held_back("hello wor", ["world"]) == 3
    assert _held_back("hello", ["xyz"]) == 0
    assert _held_back("ab\n", ["\nUser:"]) == 1


@pytest.mark.parametrize(
    "bad",
    [{"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_k": -1}, {"repetition_penalty": 0}],
)
def test_options_are_validated(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        GenerationOptions(**bad)


class ScriptedModel(torch.nn.Module):
    """Streams the tokens of fixed text pieces through generate()'s streamer: stream_reply's
    holding-back logic tested on exactly the piece boundaries that matter."""

    def __init__(self, tokenizer, pieces: list[str]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = None
        self.pieces = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in pieces]

    def generate(self, input_ids, streamer, stopping_criteria, **_):
        streamer.put(input_ids)  # as transformers does: the prompt first
        for ids in self.pieces:
            if stopping_criteria[0](input_ids, None).all():
                break
            for token in ids:
                streamer.put(torch.tensor([token]))
        streamer.end()


def test_stream_never_sends_the_space_before_a_stop_string(tiny_model_and_tokenizer):
    """ "hello ab" with stop "abc": "ab" may become the stop string, so the space before it may end the
    reply; it must not be sent before that is known (the reply is "hello", not "hello ")."""
    _, tok = tiny_model_and_tokenizer
    model = ScriptedModel(tok, ["hello", " ", "ab", "c", " more"])
    opts = GenerationOptions(max_new_tokens=8, stop=["abc"])
    assert "".join(stream_reply(model, tok, CONVERSATIONS[0], opts)) == "hello"
    model = ScriptedModel(tok, ["hello", " ", "ab", "d"])  # the stop never completes: everything arrives
    assert "".join(stream_reply(model, tok, CONVERSATIONS[0], opts)) == "hello abd"
