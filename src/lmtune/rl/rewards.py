"""Reward functions for task: grpo / rloo: the built-ins, loading the user's own, and the wrapper
that turns a failing reward into one sentence naming the function and the record.

A reward function has TRL's signature, so one written for TRL works unchanged:

    def my_reward(completions, prompts, answer, **kwargs) -> list[float | None]

`completions` holds one answer per sampled completion (a string, or a one-message list
[{"role": "assistant", "content": ...}] when the prompts are chat messages); every other column
of the prompt file arrives as a keyword list aligned with it (`answer[i]` belongs to
`completions[i]`). None means "this reward does not apply to this completion".
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError, LmtuneError

# Keyword arguments TRL passes besides the data's columns; a user's function may ask for them.
TRL_ARGS = frozenset(
    {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}
)
RECORD_COLUMN = "lmtune_record"  # where each prompt came from ("file#n"); never shown to reward functions
DEFAULT_COLUMN = "answer"
ACCURACY_REWARDS = ("exact_match", "numeric_match")  # 0/1 rewards: their mean is an accuracy

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)
_THINK_THEN_ANSWER = re.compile(r"\s*<think>.+?</think>\s*\S.*", re.S)


class RewardError(LmtuneError):
    """A reward function failed or returned something other than one number per completion."""


# ---------------------------------------------------------------- text helpers


def completion_text(completion: Any) -> str:
    """The answer's text, whether TRL passes a string or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content") or "" for m in completion if isinstance(m, dict))
    return str(completion)


def final_answer(text: str) -> str:
    """The part of an answer that is graded: the last <answer>...</answer> if any, else what follows
    the last </think>, else the whole text."""
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        return tagged[-1].strip()
    if "</think>" in text:
        return text.rpartition("</think>")[2].strip()
    return text.strip()


def normalize(text: str) -> str:
    return " ".join(str(text).lower().split()).rstrip(".!。 ")


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def parse_reference_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    return last_number(str(value)) if value is not None else None


# ---------------------------------------------------------------- built-ins


def exact_match(completions: list[Any], *, reference: Sequence[Any], **_: Any) -> list[float]:
    """1.0 when the final answer equals the reference (case, spacing and a trailing full stop ignored)."""
    return [
        float(normalize(final_answer(completion_text(c))) == normalize(r))
        for c, r in zip(completions, reference)
    ]


def numeric_match(completions: list[Any], *, reference: Sequence[Any], **_: Any) -> list[float]:
    """1.0 when the last number of the final answer equals the reference number (commas ignored)."""
    out = []
    for c, r in zip(completions, reference):
        got, want = last_number(final_answer(completion_text(c))), parse_reference_number(r)
        out.append(
            float(
                got is not None and want is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
            )
        )
    return out


def think_format(completions: list[Any], **_: Any) -> list[float]:
    """1.0 when the answer is <think>reasoning</think> followed by a non-empty answer."""
    return [float(bool(_THINK_THEN_ANSWER.fullmatch(completion_text(c)))) for c in completions]


def regex_match(completions: list[Any], *, pattern: str, **_: Any) -> list[float]:
    """1.0 when the answer contains `pattern` (re.search, `.` matching newlines)."""
    rx = re.compile(pattern, re.S)
    return [float(bool(rx.search(completion_text(c)))) for c in completions]


def length_penalty(
    completions: list[Any],
    *,
    max_tokens: int,
    completion_ids: Sequence[Sequence[int]] | None = None,
    **_: Any,
) -> list[float]:
    """0 up to `max_tokens` tokens, then -(tokens over) / max_tokens, at most -1. Counts TRL's
    completion token ids; without them (scoring saved answers) whitespace-separated words."""
    sizes = [len(ids) for ids in completion_ids] if completion_ids is not None else None
    out = []
    for i, c in enumerate(completions):
        n = sizes[i] if sizes is not None else len(completion_text(c).split())
        out.append(-min(1.0, max(0, n - max_tokens) / max_tokens))
    return out


BUILTINS: dict[str, Callable[..., list[float]]] = {
    "exact_match": exact_match,
    "numeric_match": numeric_match,
    "think_format": think_format,
    "regex": regex_match,
    "length_penalty": length_penalty,
}


# ---------------------------------------------------------------- loading


def load_function(spec: str) -> Callable[..., Any]:
    """`module:function` or `path/to/file.py:function`, imported; any problem is a ConfigError."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ConfigError(
            f"rl.rewards: '{spec}' is neither a built-in nor module:function / path/to/file.py:function"
        )
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ConfigError(
                f"rl.rewards: reward file {path} not found (relative paths start at the config file's folder)"
            )
        module_name = f"lmtune_rewards_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # dataclasses/pickling inside the file look themselves up here
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:  # the user's file: report it, do not crash with its traceback
            raise ConfigError(f"rl.rewards: loading {path} raised {type(err).__name__}: {err}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ConfigError(
                f"rl.rewards: cannot import module '{where}' for reward '{spec}' ({err}). Give an importable module "
                "(on PYTHONPATH) or a file path ending in .py"
            ) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        found = [n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")]
        raise ConfigError(
            f"rl.rewards: '{where}' has no function '{name}'"
            + (f"; it defines {', '.join(found)}" if found else "")
        )
    return fn


def needed_columns(fn: Callable[..., Any]) -> tuple[list[str], bool]:
    """(data columns the function requires by name, whether it takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return [], True
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    required = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is p.empty
        and p.name not in TRL_ARGS
    ]
    return required, takes_kwargs


@dataclass
class Recorder:
    """The latest batch the rewards scored, for completions.jsonl (see rl/logs.py)."""

    prompts: list[Any] = field(default_factory=list)
    completions: list[Any] = field(default_factory=list)
    rewards: dict[str, list[float | None]] = field(default_factory=dict)
    fresh: bool = False


class RewardFn:
    """One configured reward as TRL calls it: its name (TRL's metric key rewards/<name>/mean), the
    built-in's options bound, the record column hidden, failures turned into a RewardError."""

    def __init__(self, entry: Any, *, index: int = 0, recorder: Recorder | None = None):
        self.spec = entry.reward
        self.weight = entry.weight
        self.index = index
        self.recorder = recorder
        self.builtin = entry.reward in BUILTINS
        if self.builtin:
            self.fn = BUILTINS[entry.reward]
            self.column = entry.column or DEFAULT_COLUMN if entry.reward in ACCURACY_REWARDS else None
            self.options = {
                k: v for k, v in {"pattern": entry.pattern, "max_tokens": entry.max_tokens}.items() if v
            }
            self.columns = [self.column] if self.column else []
        else:
            self.fn = load_function(entry.reward)
            self.column, self.options = None, {}
            self.columns, takes_kwargs = needed_columns(self.fn)
            if not takes_kwargs:
                raise ConfigError(
                    f"rl.rewards: {entry.reward} must accept **kwargs: TRL passes every column of the prompt file "
                    "(and its own arguments) to each reward function. Add **kwargs to its parameters"
                )
        self.__name__ = entry.name or entry.reward.rpartition(":")[2]
        self.is_accuracy = self.builtin and entry.reward in ACCURACY_REWARDS

    def check_columns(self, columns: set[str], file: str) -> None:
        missing = [c for c in self.columns if c not in columns]
        if missing:
            have = ", ".join(sorted(columns - {RECORD_COLUMN})) or "none"
            raise ConfigError(
                f"reward '{self.__name__}' needs the column(s) {', '.join(missing)}, which {file} does not have "
                f"(its columns: {have}). "
                + (
                    "Set column: in the reward's entry"
                    if self.builtin
                    else "Add the column, or give it a default"
                )
            )

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        records = kwargs.pop(RECORD_COLUMN, None)
        values = self._call(prompts, completions, kwargs, records)
        if self.recorder is not None:
            if self.index == 0:
                self.recorder.prompts, self.recorder.completions, self.recorder.rewards = (
                    prompts,
                    completions,
                    {},
                )
                self.recorder.fresh = True
            self.recorder.rewards[self.__name__] = values
        return values

    def _call(self, prompts: list[Any], completions: list[Any], kwargs: dict, records: list | None) -> list:
        args = dict(kwargs)
        if self.builtin:
            if self.column:
                args["reference"] = args.get(self.column)
            args.update(self.options)
        try:
            out = self.fn(prompts=prompts, completions=completions, **args)
        except Exception as err:  # the user's code: locate the record instead of a traceback
            raise self._failure(err, prompts, completions, kwargs, records) from None
        try:
            values = [None if v is None else float(v) for v in out]
        except (TypeError, ValueError):
            values = None
        if values is None or len(values) != len(completions):
            raise RewardError(
                f"reward '{self.__name__}' ({self.spec}) returned {type(out).__name__} "
                f"{str(out)[:80]}; it must return one number (or None) per completion, a list of "
                f"{len(completions)} here"
            )
        return values

    def _failure(
        self, err: Exception, prompts: list, completions: list, kwargs: dict, records: list | None
    ) -> RewardError:
        """Re-run record by record to name the one that fails (the batch call hid which)."""
        bad = 0
        for i in range(len(completions)):
            one = {
                k: [v[i]] if isinstance(v, list) and len(v) == len(completions) else v
                for k, v in kwargs.items()
            }
            if self.builtin:
                if self.column:
                    one["reference"] = one.get(self.column)
                one.update(self.options)
            try:
                self.fn(prompts=[prompts[i]], completions=[completions[i]], **one)
            except Exception as one_err:
                bad, err = i, one_err
                break
        where = f"record {records[bad]}" if records else f"completion {bad + 1} of the batch"
        prompt = completion_text(prompts[bad][-1:] if isinstance(prompts[bad], list) else prompts[bad])
        return RewardError(
            f"reward '{self.__name__}' ({self.spec}) raised {type(err).__name__}: {err} — on {where} "
            f"(prompt {prompt[:120]!r}, completion {completion_text(completions[bad])[:120]!r}). "
            "Fix the function, or return None for completions it cannot score"
        )


def build_rewards(entries: Sequence[Any], recorder: Recorder | None = None) -> list[RewardFn]:
    """The configured rewards, imported and checked (before any model loads)."""
    return [RewardFn(e, index=i, recorder=recorder) for i, e in enumerate(entries)]


def score(
    rewards: Sequence[RewardFn], prompts: list[Any], completions: list[Any], columns: dict[str, list[Any]]
) -> dict[str, list[float | None]]:
    """Each reward's values for already generated answers (lmtune eval), plus their weighted sum
    under "total" (None rewards count as 0, as in TRL's nansum)."""
    out: dict[str, list[float | None]] = {}
    for r in rewards:
        out[r.__name__] = r(prompts, completions, **columns)
    out["total"] = [
        sum(r.weight * (out[r.__name__][i] or 0.0) for r in rewards) for i in range(len(completions))
    ]
    return out
