"""benchmarks/template_survey.py on the real chat templates in shared/: every one masks every survey
record (multi-turn, system, weight 0, Chinese, reasoning, tool call) with its sanity checks passing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tests.families import VOCAB_TEMPLATES

SURVEY = Path(__file__).resolve().parents[2] / "benchmarks" / "template_survey.py"
TEMPLATES = sorted((VOCAB_TEMPLATES / "templates").glob("*.jinja"))


@pytest.fixture(scope="module")
def survey():
    spec = importlib.util.spec_from_file_location("template_survey", SURVEY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stand_in(family_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(family_tokenizer_dir("qwen2"))


def test_every_shared_template_masks_every_survey_record(survey, stand_in):
    assert len(TEMPLATES) >= 10
    before = stand_in.chat_template
    try:
        results = {t.stem: survey.survey_one(stand_in, t.read_text()) for t in TEMPLATES}
    finally:
        stand_in.chat_template = before
    failing = {k: v for k, v in results.items() if v["status"] != "pass"}
    # Gemma 2 has no tool role (its template raises on the tool message): that one record is a reject.
    assert failing == {"google-gemma-2-2b-it": {"status": "reject", "detail": "template_error x1"}}


def test_survey_flags_a_template_that_trains_a_user_turn(survey, stand_in):
    """The survey's own check can fail: a template whose assistant turn repeats the user text."""
    echo = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}"
        "{{ messages[loop.index0 - 1]['content'] }} {% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    before = stand_in.chat_template
    try:
        result = survey.survey_one(stand_in, echo)
    finally:
        stand_in.chat_template = before
    assert result["status"] == "wrong" and "user text trained" in result["detail"]
