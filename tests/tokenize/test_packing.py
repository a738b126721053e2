"""Packing: best-fit decreasing bins, and a packed batch trains exactly like its samples one by one."""

from __future__ import annotations

import random

import pytest
import torch
from tests.conftest import tiny_llama as conftest_tiny_llama

from lmtune.tokenize.masking import IGNORE, Tokenized
from lmtune.tokenize.packing import PackedCollator, best_fit_decreasing, pack_samples, packing_stats
from lmtune.train.lm_loss import chunked_lm_loss_sum, decoder_and_head


def test_best_fit_decreasing_places_every_sample_once_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    # Within one bin of the lower bound ceil(total / capacity) on this easy input.
    assert len(bins) <= -(-sum(lengths) // 128) + 1


def test_best_fit_picks_the_tightest_row():
    # 6 opens row 0 (room 4); 5 does not fit there and opens row 1 (room 5); 4 goes to the tighter
    # row 0 (room 4 < 5), filling it; 3 goes to row 1.
    assert best_fit_decreasing([5, 6, 4, 3], 10) == [[1, 2], [0, 3]]


def reference_best_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing the plain way: a sorted list of (room, bin), O(bins) per insert."""
    import bisect

    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        at = bisect.bisect_left(room, (lengths[i], -1))
        if at < len(room):
            left, b = room.pop(at)
            bins[b].append(i)
            bisect.insort(room, (left - lengths[i], b))
        else:
            bins.append([i])
            bisect.insort(room, (capacity - lengths[i], len(bins) - 1))
    return bins


def test_best_fit_equals_the_plain_sorted_list_version():
    rnd = random.Random(0)
    for trial in range(200):
        cap = rnd.choice([1, 7, 16, 100, 1024])
        lengths = [rnd.randint(0 if trial % 5 == 0 else 1, cap) for _ in range(rnd.randint(0, 300))]
        assert best_fit_decreasing(lengths, cap) == reference_best_fit(lengths, cap)


def test_a_sample_longer_than_the_row_is_refused():
    with pytest.raises(ValueError, match="more than the row width"):
        best_fit_decreasing([3, 11], 10)


def samples(rng: random.Random, n: int, vocab: int = 300) -> list[Tokenized]:
    out = []
    for _ in range(n):
        length = rng.randint(4, 30)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = rng.randint(1, length - 2)
        out.append(Tokenized(ids, [IGNORE] * prompt + ids[prompt:]))
    return out


def test_collator_restarts_positions_per_sample_and_for_padding():
    rows = pack_samples([Tokenized([5, 6, 7], [IGNORE, 6, 7]), Tokenized([8, 9], [IGNORE, 9])], 8)
    batch = PackedCollator(pad_token_id=0, pad_to=8)(
        [{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids} for r in rows]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9, IGNORE, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]]
    assert packing_stats(rows, 8) == {"rows": 1, "row_width": 8, "fill": 0.625}


def tiny_llama(attn: str):
    if attn == "lmtune_packed":
        from lmtune.train.packed_attention import register

        register()
    return conftest_tiny_llama(300, attn=attn)


@pytest.mark.parametrize("attn", ["sdpa", "eager", "lmtune_packed"])
def test_packed_loss_and_gradients_equal_samples_one_by_one(attn):
    rng = random.Random(1)
    data = samples(rng, 12)
    model = tiny_llama(attn)

    # Reference: every sample alone, the model's own loss (mean over its trained tokens) turned back
    # into a sum, then divided by all trained tokens.
    total_trained = sum(sum(1 for x in s.labels[1:] if x != IGNORE) for s in data)
    model.zero_grad()
    ref = 0.0
    for s in data:
        out = model(input_ids=torch.tensor([s.input_ids]), labels=torch.tensor([s.labels]))
        n = sum(1 for x in s.labels[1:] if x != IGNORE)
        (out.loss * n / total_trained).backward()
        ref += out.loss.item() * n / total_trained
    ref_grads = {k: p.grad.clone() for k, p in model.named_parameters()}

    rows = pack_samples(data, 64)
    assert len(rows) < len(data)  # several samples per row, or the test proves nothing
    batch = PackedCollator(pad_token_id=0, pad_to=64)(
        [{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids} for r in rows]
    )
    model.zero_grad()
    decoder, head = decoder_and_head(model)
    hidden = decoder(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
    ).last_hidden_state
    loss = chunked_lm_loss_sum(hidden, head, batch["labels"], chunk=16) / total_trained
    loss.backward()

    assert loss.item() == pytest.approx(ref, rel=1e-5)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[k], rtol=1e-4, atol=1e-6, msg=k)


def batch_without_mask(batch):
    return {k: v for k, v in batch.items() if k != "attention_mask"}


def test_without_isolation_the_packed_loss_differs():
    """The check above can fail: the same rows under one causal mask over the whole row (packing
    without isolation) give a different loss. (A key/value cache would also switch isolation off in
    transformers, which is why LMTrainer passes use_cache=False.)"""
    rng = random.Random(1)
    data = samples(rng, 12)
    model = tiny_llama("sdpa")
    rows = pack_samples(data, 64)
    batch = PackedCollator(pad_token_id=0, pad_to=64)(
        [{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids} for r in rows]
    )
    with torch.no_grad():
        isolated = model(**batch_without_mask(batch), use_cache=False).loss
        leaky = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss
    assert abs(isolated.item() - leaky.item()) > 1e-3
