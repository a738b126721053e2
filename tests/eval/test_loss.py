"""Eval loss counts exactly the answer tokens: checked against a second rendering of the template
(everything after the generation prompt), summed by hand from the model's log-probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from lmtune.eval.items import EvalItem
from lmtune.eval.loss import conversation_nll, corpus_loss

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "2 plus 3 is 5."}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue, the colour of a clear sky at noon."},
    ],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
]


def answer_nll_by_hand(model, tokenizer, messages) -> tuple[float, int]:
    """-log p(answer tokens | prompt): the answer is what the full rendering adds to the prompt."""
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert full.startswith(prompt)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert ids[: len(p_ids)] == p_ids  # the prompt tokenises the same on its own
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    total = -sum(logp[t - 1, ids[t]].item() for t in range(len(p_ids), len(ids)))
    return total, len(ids) - len(p_ids)


@pytest.fixture(scope="module")
def items():
    out = [EvalItem(f"x#{k}", m[:-1], m[-1]["content"], messages=m) for k, m in enumerate(CONVERSATIONS)]
    return out + [EvalItem("x#4", [{"role": "user", "content": "no answer"}])]  # nothing to score


def test_answer_tokens_only_and_token_weighted(tiny_model_and_tokenizer, items):
    model, tokenizer = tiny_model_and_tokenizer
    got = conversation_nll(model, tokenizer, items, batch_size=2)
    assert got[-1] is None
    expected = [answer_nll_by_hand(model, tokenizer, m) for m in CONVERSATIONS]
    for (nll, n), (want, want_n) in zip(got[:-1], expected):
        assert n == want_n
        assert nll == pytest.approx(want, rel=1e-4)
    total = corpus_loss(got)
    tokens = sum(n for _, n in expected)
    assert total["loss_tokens"] == tokens and total["loss_records"] == 3
    assert total["loss"] == pytest.approx(sum(x for x, _ in expected) / tokens, rel=1e-4)
    assert total["perplexity"] == pytest.approx(math.exp(total["loss"]))


def test_padding_does_not_change_the_numbers(tiny_model_and_tokenizer, items):
    model, tokenizer = tiny_model_and_tokenizer
    alone = conversation_nll(model, tokenizer, items, batch_size=1)
    batched = conversation_nll(model, tokenizer, items, batch_size=4)
    for a, b in zip(alone[:-1], batched[:-1]):
        assert a[1] == b[1] and a[0] == pytest.approx(b[0], rel=1e-4)


def test_nothing_scorable():
    assert corpus_loss([None, (0.0, 0)]) == {
        "loss": None,
        "perplexity": None,
        "loss_records": 0,
        "loss_tokens": 0,
    }
