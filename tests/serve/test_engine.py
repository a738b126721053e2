"""The batching engine without HTTP: rows that join a running batch mid-flight, with prompts of
different lengths, get exactly the greedy text `model.generate` gives each prompt alone; seeded
sampling does not depend on the other rows; the queue limits; a closed reply frees its row."""

from __future__ import annotations

import time

import pytest
from tests.serve.helpers import raw_continuation

from lmtune.infer.generate import GenerationOptions
from lmtune.serve.engine import ModelSlot, Outcome, QueueFull

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [
    "Once upon a time",
    "The",
    "A very long prompt about the weather, the sea and the mountains",
    "2 + 2 =",
]


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def start(slot: ModelSlot, prompt: str, **options):
    outcome = Outcome()
    reply = slot.generate(
        slot.text_prompt(prompt), GenerationOptions(**options), strip=False, outcome=outcome
    )
    return reply, outcome


def test_rows_joining_mid_flight_equal_generating_each_alone(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    slot = ModelSlot("tiny", model, tokenizer, max_batch=8)
    first = [start(slot, p, max_new_tokens=24) for p in PROMPTS[:2]]
    wait_for(lambda: len(first[0][0].request.generated) >= 5)  # the batch is running
    later = [start(slot, p, max_new_tokens=12 + 4 * i) for i, p in enumerate(PROMPTS[2:])]
    replies = ["".join(r) for r, _ in first + later]
    budgets = [24, 24, 12, 16]
    expected = [raw_continuation(model, tokenizer, p, n) for p, n in zip(PROMPTS, budgets, strict=True)]
    assert replies == expected and all(expected)
    assert slot.scheduler.widest >= 3  # rows really shared steps (not one after another)
    for (_, outcome), budget in zip(first + later, budgets, strict=True):
        assert 0 < outcome.completion_tokens <= budget and outcome.finish_reason in ("stop", "length")
    wait_for(lambda: slot.scheduler.active() == 0)


def test_stop_string_ends_its_row_only(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    slot = ModelSlot("tiny", model, tokenizer)
    full = raw_continuation(model, tokenizer, PROMPTS[0], 20)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    (cut, cut_outcome), (other, _) = (
        start(slot, PROMPTS[0], max_new_tokens=20, stop=[stop]),
        start(slot, PROMPTS[1], max_new_tokens=20),
    )
    assert "".join(cut) == full[: full.index(stop)] and cut_outcome.finish_reason == "stop"
    assert "".join(other) == raw_continuation(model, tokenizer, PROMPTS[1], 20)


def test_seeded_sampling_does_not_depend_on_the_other_rows(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    slot = ModelSlot("tiny", model, tokenizer)
    sampled = dict(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    alone = "".join(start(slot, PROMPTS[0], **sampled)[0])
    crowd = [start(slot, p, max_new_tokens=16, temperature=1.3, seed=i) for i, p in enumerate(PROMPTS[1:])]
    again = "".join(start(slot, PROMPTS[0], **sampled)[0])
    other_seed = "".join(start(slot, PROMPTS[0], **{**sampled, "seed": 8})[0])
    for reply, _ in crowd:
        "".join(reply)
    assert alone == again and alone != other_seed


def test_queue_limits_and_a_closed_reply_frees_its_row(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    slot = ModelSlot("tiny", model, tokenizer, max_batch=1, max_queue=1)
    running, _ = start(slot, PROMPTS[0], max_new_tokens=2000)
    next(running)
    waiting, _ = start(slot, PROMPTS[1], max_new_tokens=3)
    with pytest.raises(QueueFull):
        start(slot, PROMPTS[2], max_new_tokens=3)
    running.close()  # the client went away: its row is freed at the next step, the waiting one runs
    assert "".join(waiting) == raw_continuation(model, tokenizer, PROMPTS[1], 3)
    assert len(running.request.generated) < 100
    wait_for(lambda: slot.scheduler.active() == 0)


def test_repetition_penalty_per_row_matches_transformers(tiny_model_and_tokenizer):
    """One row with a penalty (below 1: seen tokens favoured, so it shows on a random model), one without,
    in the same batch: each equals `model.generate` alone."""
    import torch

    from lmtune.infer.generate import _eos_ids

    model, tokenizer = tiny_model_and_tokenizer
    slot = ModelSlot("tiny", model, tokenizer)
    penalized, _ = start(slot, PROMPTS[0], max_new_tokens=16, repetition_penalty=0.4)
    plain, _ = start(slot, PROMPTS[3], max_new_tokens=16)
    eos = _eos_ids(model, tokenizer)
    enc = tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=16,
            do_sample=False,
            repetition_penalty=0.4,
            eos_token_id=eos,
            pad_token_id=eos[0],
        )
    row = out[0, enc["input_ids"].shape[1] :].tolist()
    row = row[: next((i for i, t in enumerate(row) if t in eos), len(row))]
    expected = tokenizer.decode(row, skip_special_tokens=True)
    assert "".join(penalized) == expected != raw_continuation(model, tokenizer, PROMPTS[0], 16)
    assert "".join(plain) == raw_continuation(model, tokenizer, PROMPTS[3], 16)


@pytest.mark.parametrize("prefill_tokens", [2048, 16])
def test_requests_joining_at_once_are_prefilled_together(tiny_model_and_tokenizer, prefill_tokens):
    """Four prompts of different lengths arrive together while a row is generating: they are prefilled
    in one left-padded forward (or, with a small `prefill_tokens`, in chunks of 4 columns with the
    running row stepping in between), and each gets exactly the greedy text it gets alone."""
    import math

    from lmtune.serve.engine import Scheduler

    model, tokenizer = tiny_model_and_tokenizer
    scheduler = Scheduler(
        model, ModelSlot("x", model, tokenizer).eos, max_batch=8, prefill_tokens=prefill_tokens
    )
    slot = ModelSlot("tiny", model, tokenizer, scheduler=scheduler)
    running, _ = start(slot, PROMPTS[1], max_new_tokens=40)
    wait_for(lambda: len(running.request.generated) >= 3)
    prefills, steps = scheduler.prefills, scheduler.steps
    with scheduler._wake:  # all four are waiting before the scheduler looks at the queue again
        later = [
            start(slot, p, max_new_tokens=10 + i) for i, p in enumerate([PROMPTS[0], *PROMPTS[2:], "Hi"])
        ]
    texts = ["".join(r) for r, _ in later]
    prompts = [PROMPTS[0], *PROMPTS[2:], "Hi"]
    expected = [raw_continuation(model, tokenizer, p, 10 + i) for i, p in enumerate(prompts)]
    assert texts == expected and all(expected)
    assert "".join(running) == raw_continuation(model, tokenizer, PROMPTS[1], 40)
    width = max(len(slot.text_prompt(p)) for p in prompts)
    chunks = math.ceil(width / max(1, prefill_tokens // len(prompts)))
    assert scheduler.prefills - prefills == chunks  # one group, not one forward per request
    assert chunks == (1 if prefill_tokens == 2048 else math.ceil(width / 4)) and width > 4
    assert scheduler.steps - steps >= 10  # the running row kept stepping (also between the chunks)
    assert scheduler.widest == 5
    wait_for(lambda: scheduler.active() == 0)


def test_a_crowd_is_prefilled_in_groups_within_the_token_budget(tiny_model_and_tokenizer):
    """Requests arriving at once join in first-come groups whose padded prompt block (rows x widest)
    stays within `group_tokens`, so the first group gets its first tokens before the rest is prefilled;
    every answer is still exactly what the prompt gets alone."""
    from lmtune.serve.engine import Scheduler

    model, tokenizer = tiny_model_and_tokenizer
    prompts = [PROMPTS[0], PROMPTS[2], PROMPTS[3], "Hi"]
    ids = [ModelSlot("x", model, tokenizer).text_prompt(p) for p in prompts]
    budget = 2 * max(len(ids[0]), len(ids[1]))  # the first two fit together, a third would not
    assert 3 * max(len(i) for i in ids[:3]) > budget
    scheduler = Scheduler(model, ModelSlot("x", model, tokenizer).eos, max_batch=8, group_tokens=budget)
    slot = ModelSlot("tiny", model, tokenizer, scheduler=scheduler)
    # the grouping alone, first come first served (an independent count of the rule)
    expected_groups, group, widest = [], [], 0
    for n in map(len, ids):
        if group and (len(group) + 1) * max(widest, n) > budget:
            expected_groups.append(group)
            group, widest = [], 0
        group.append(n)
        widest = max(widest, n)
    expected_groups.append(group)
    assert len(expected_groups) >= 2
    "".join(start(slot, "Hello", max_new_tokens=2)[0])  # the first prompt ever runs alone (cache kind)
    wait_for(lambda: scheduler.active() == 0)
    prefills = scheduler.prefills
    with scheduler._wake:  # all four are waiting before the scheduler looks at the queue
        started = [start(slot, p, max_new_tokens=8) for p in prompts]
    texts = ["".join(r) for r, _ in started]
    assert texts == [raw_continuation(model, tokenizer, p, 8) for p in prompts]
    assert scheduler.prefills - prefills == len(expected_groups)  # one forward per group, no chunks
    wait_for(lambda: scheduler.active() == 0)
