"""Property-based fuzzing of the readers, the task loaders and the tokenisation step (hypothesis).

The property: whatever the bytes, JSON values or message lists, every input either loads, is
rejected with a reason and a fix, or stops with lmtune's own user error (LmtuneError). Any other
exception (a KeyError, a RecursionError, a jinja2 error) is a bug a user would see as a traceback.
Example counts are kept small so the whole file runs in a few seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmtune.data.readers import iter_raw_records
from lmtune.data.sources import SourceSpec, load_file
from lmtune.errors import LmtuneError

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TASKS = ("sft", "preference", "classification", "pretrain")
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt")
KEYS = ("messages", "role", "content", "instruction", "input", "output", "prompt", "completion", "chosen",
        "rejected", "text", "label", "conversations", "from", "value", "weight", "tool_calls", "system")  # fmt: skip
ROLES = ("user", "assistant", "system", "tool", "human", "gpt", "bot", "")

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=5),
    ),
    max_leaves=20,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.one_of(st.sampled_from(ROLES), json_scalars)},
        optional={
            "content": st.one_of(st.text(max_size=30), json_scalars),
            "weight": st.one_of(st.sampled_from([0, 1, 0.5, -1]), json_scalars),
        },
    ),
    max_size=6,
)


def load_outcome(path: Path, task: str) -> str:
    """'loaded', 'error' (an LmtuneError with a file and a fix) for one file; anything else raises."""
    try:
        result = load_file(SourceSpec(str(path), path.name), task, on_error="skip")
    except LmtuneError as err:
        assert str(err).strip(), "an error without a message"
        return "error"
    assert result.records, "a load that returns no records must raise instead"
    assert result.total == len(result.records) + len(result.rejects)
    for r in result.rejects:
        assert r.reason and r.message and r.record is not None, r
    return "loaded"


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from(SUFFIXES))
def test_arbitrary_bytes(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("bytes") / f"data{suffix}"
    path.write_bytes(data)
    try:  # the reader alone: records or RawRecords with an error, else an LmtuneError
        for raw in iter_raw_records(path):
            assert (raw.data is None) != (raw.error is None)
    except LmtuneError:
        pass
    for task in TASKS:
        load_outcome(path, task)


@FUZZ
@given(values=st.lists(json_values, min_size=1, max_size=5), as_array=st.booleans())
def test_arbitrary_json_values(tmp_path_factory, values, as_array):
    folder = tmp_path_factory.mktemp("json")
    if as_array:
        path = folder / "data.json"
        path.write_text(json.dumps(values))
    else:
        path = folder / "data.jsonl"
        path.write_text("\n".join(json.dumps(v) for v in values) + "\n")
    for task in TASKS:
        load_outcome(path, task)


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer):
    return smollm2_tokenizer


def _finite(value: Any) -> bool:
    return not (isinstance(value, float) and not math.isfinite(value))


@FUZZ
@given(records=st.lists(st.fixed_dictionaries({"messages": messages}), min_size=1, max_size=4))
def test_arbitrary_conversations_through_tokenisation(tmp_path_factory, tokenizer, records):
    """Message lists of any shape: loaded and tokenised (each sample trains on something, or is a
    reject with a reason), or one LmtuneError; never any other exception."""
    from lmtune.tokenize.dataset import tokenize_records

    path = tmp_path_factory.mktemp("conv") / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    try:
        result = load_file(SourceSpec(str(path), path.name), "sft", on_error="skip")
        tokenized = tokenize_records(result.records, tokenizer, max_length=64, train_on="all")
    except LmtuneError:
        return
    assert len(tokenized.samples) + len(tokenized.rejects) == len(result.records)
    for sample in tokenized.samples:
        assert len(sample.input_ids) == len(sample.labels) <= 64 and sample.num_trained > 0
    for r in tokenized.rejects:
        assert r.reason and r.message and r.record is not None


@FUZZ
@given(
    prompt=st.one_of(st.text(max_size=20), messages, json_scalars),
    chosen=st.one_of(st.text(max_size=20), messages, json_scalars),
    rejected=st.one_of(st.text(max_size=20), messages, json_scalars),
)
def test_arbitrary_preference_records_through_the_template(
    tmp_path_factory, tokenizer, prompt, chosen, rejected
):
    from lmtune.train.preference import fit_lengths

    path = tmp_path_factory.mktemp("pref") / "data.jsonl"
    path.write_text(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    try:
        result = load_file(SourceSpec(str(path), path.name), "preference", on_error="skip")
        kept, _, rejects = fit_lengths(result.records, tokenizer=tokenizer, max_length=64, max_prompt=None)
    except LmtuneError:
        return
    assert len(kept) + len(rejects) == len(result.records)
