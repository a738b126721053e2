"""Reward plumbing: the built-ins against hand-computed values, module:function and file loading,
weights, the columns a reward needs, and a reward that raises or returns garbage."""

from __future__ import annotations

import sys

import pytest

from lmtune.config.loader import validate_config
from lmtune.config.schema import RewardEntry
from lmtune.errors import ConfigError
from lmtune.rl.rewards import (
    RECORD_COLUMN,
    Recorder,
    RewardError,
    build_rewards,
    final_answer,
    length_penalty,
    score,
)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def call(entry, completions, **columns):
    (fn,) = build_rewards([RewardEntry.model_validate(entry)])
    return fn(prompts=["p"] * len(completions), completions=completions, **columns)


def test_final_answer_prefers_answer_tags_then_text_after_think():
    assert final_answer("<think>2+2 is 4</think> 4") == "4"
    assert final_answer("x <answer> 7 </answer> then <answer>8</answer>") == "8"
    assert final_answer("  plain 5 ") == "plain 5"


def test_numeric_match_reads_the_last_number_of_the_final_answer():
    completions = [chat("<think>3 + 4 = 7, not 8</think>The answer is 7."), chat("It is 1,234"), chat("8"), chat("no idea"),
                   "7.0"]  # fmt: skip
    answers = ["7", "1234", 7, "7", "7"]
    # hand-computed: 7==7; 1,234 -> 1234; 8 != 7; no number; 7.0 == 7 (plain-string completions work too)
    assert call("numeric_match", completions, answer=answers) == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_exact_match_ignores_case_spacing_and_a_final_full_stop_and_reads_its_column():
    completions = [chat("<think>r</think>  Paris."), chat("paris france"), chat("PARIS")]
    entry = {"reward": "exact_match", "column": "city"}
    assert call(entry, completions, city=["paris", "Paris", "Paris"]) == [1.0, 0.0, 1.0]


def test_think_format_regex_and_length_penalty():
    completions = [
        chat("<think>because</think>42"),
        chat("<think>because</think>"),
        chat("42 <think>x</think>"),
    ]
    assert call("think_format", completions) == [1.0, 0.0, 0.0]
    assert call({"reward": "regex", "pattern": r"^\d+"}, [chat("42 apples"), chat("apples 42")]) == [1.0, 0.0]
    # 10 tokens allowed: 8 -> 0, 15 -> -(5/10), 40 -> capped at -1
    ids = [[0] * 8, [0] * 15, [0] * 40]
    assert call({"reward": "length_penalty", "max_tokens": 10}, ["a", "b", "c"], completion_ids=ids) == [
        0.0,
        -0.5,
        -1.0,
    ]
    assert length_penalty(["one two three"], max_tokens=2) == [-0.5]  # no ids: words


def test_module_function_and_file_function_with_weights(tmp_path, monkeypatch):
    (tmp_path / "mod_rewards.py").write_text(
        "def first_char(completions, target, **kw):\n"
        "    return [float(c[0]['content'][:1] == t) for c, t in zip(completions, target)]\n"
    )
    (tmp_path / "other.py").write_text(
        "def count(completions, **kw):\n    return [len(c[0]['content']) for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    entries = [
        RewardEntry(reward="mod_rewards:first_char", weight=2.0),
        RewardEntry(reward=f"{tmp_path / 'other.py'}:count", weight=0.5, name="chars"),
    ]
    rewards = build_rewards(entries)
    assert [r.__name__ for r in rewards] == ["first_char", "chars"]
    assert rewards[0].columns == ["target"]
    completions = [chat("abc"), chat("xy")]
    out = score(rewards, ["p", "p"], completions, {"target": ["a", "a"], RECORD_COLUMN: ["f#1", "f#2"]})
    assert out["first_char"] == [1.0, 0.0] and out["chars"] == [3.0, 2.0]
    assert out["total"] == [2.0 * 1.0 + 0.5 * 3.0, 2.0 * 0.0 + 0.5 * 2.0]
    sys.modules.pop("mod_rewards", None)


def test_relative_reward_file_resolves_against_the_config_folder(tmp_path):
    from lmtune.config.loader import load_config

    (tmp_path / "r.py").write_text("def f(completions, **kw):\n    return [0.0] * len(completions)\n")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("task: grpo\ndata: {path: p.jsonl}\nrl: {rewards: [r.py:f], num_generations: 2}\n")
    cfg = load_config(cfg_path)
    assert cfg.rl.rewards[0].reward == f"{tmp_path / 'r.py'}:f"


@pytest.mark.parametrize(
    ("rl", "train", "message"),
    [
        ({"rewards": ["numeric_mach"]}, {}, "did you mean numeric_match"),
        ({"rewards": []}, {}, "needs rl.rewards"),
        (
            {"rewards": ["numeric_match"], "num_generations": 3},
            {"batch_size": 4},
            r"multiple of rl.num_generations \(3\)",
        ),
        ({"rewards": [{"reward": "regex"}]}, {}, "needs pattern"),
        ({"rewards": [{"reward": "regex", "pattern": "("}]}, {}, "not a valid regular expression"),
        ({"rewards": [{"reward": "think_format", "column": "a"}]}, {}, "column applies to"),
        ({"rewards": ["length_penalty"]}, {}, "needs max_tokens"),
        ({"rewards": ["numeric_match", "numeric_match"]}, {}, "appear twice"),
    ],
)
def test_config_mistakes_are_sentences(rl, train, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({"task": "grpo", "data": {"path": "p.jsonl"}, "rl": rl, "train": train})


def test_rl_section_refused_for_other_tasks():
    with pytest.raises(ConfigError, match="rl section applies to task: grpo or rloo"):
        validate_config({"task": "sft", "data": {"path": "p.jsonl"}, "rl": {"num_generations": 8}})


def test_bad_functions_are_config_errors(tmp_path):
    (tmp_path / "bad.py").write_text("def no_kwargs(completions):\n    return []\nraise_later = 1\n")
    (tmp_path / "boom.py").write_text("import not_a_module_anywhere\n")
    cases = [
        (f"{tmp_path / 'missing.py'}:f", "not found"),
        (f"{tmp_path / 'bad.py'}:nope", "has no function 'nope'; it defines no_kwargs"),
        (f"{tmp_path / 'bad.py'}:no_kwargs", r"must accept \*\*kwargs"),
        (f"{tmp_path / 'boom.py'}:f", "raised ModuleNotFoundError"),
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ]
    for spec, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_rewards([RewardEntry(reward=spec)])


def test_missing_column_names_the_reward_and_the_columns():
    (fn,) = build_rewards([RewardEntry(reward="numeric_match")])
    with pytest.raises(
        ConfigError, match=r"reward 'numeric_match' needs the column\(s\) answer.*its columns: solution"
    ):
        fn.check_columns({"solution"}, "data.jsonl")


def test_a_reward_that_raises_names_itself_and_the_record(tmp_path):
    (tmp_path / "r.py").write_text(
        "def ratio(completions, answer, **kw):\n    return [1.0 / int(a) for a in answer]\n"
        "def wrong(completions, **kw):\n    return 0.5\n"
    )
    recorder = Recorder()
    ratio, wrong = build_rewards(
        [RewardEntry(reward=f"{tmp_path / 'r.py'}:ratio"), RewardEntry(reward=f"{tmp_path / 'r.py'}:wrong")],
        recorder,
    )
    batch = {"answer": ["2", "0", "4"], RECORD_COLUMN: ["sums.jsonl#1", "sums.jsonl#2", "sums.jsonl#3"]}
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    with pytest.raises(RewardError) as err:
        ratio(prompts=prompts, completions=[chat("a"), chat("b"), chat("c")], **batch)
    text = str(err.value)
    assert "reward 'ratio'" in text and "ZeroDivisionError" in text and "record sums.jsonl#2" in text
    assert "'q1'" in text and "'b'" in text
    with pytest.raises(RewardError, match="returned float 0.5.*one number \\(or None\\) per completion"):
        wrong(prompts=prompts, completions=[chat("a")] * 3, **batch)
    ok = ratio(prompts=prompts[:1], completions=[chat("a")], answer=["4"], **{RECORD_COLUMN: ["x#1"]})
    assert ok == [0.25] and recorder.rewards == {"ratio": [0.25]} and recorder.fresh
