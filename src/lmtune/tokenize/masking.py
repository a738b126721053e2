"""Render a conversation with the chat template and decide, token by token, what is trained.

The rule: an assistant turn is trained on exactly the text the model has to produce after the
generation prompt, up to where the next turn would begin, end-of-turn token included, so the
tuned model learns to stop. Everything else (system prompt, user and tool turns, the template's
injected default system prompt, role headers, padding) gets label -100.

How the trained spans are found (tokenize/spans.py has the details and a drawing): the whole
conversation is rendered once, `full`, exactly as the model will see it, and each trained assistant
message is located in it. Where the template is prefix-stable that is

    full   = render(messages)                                   the whole conversation
    P_i    = render(messages[:i], add_generation_prompt=True)   everything before answer i
    Q_i    = render(messages[:i+1])                             ... and answer i itself
    span_i = full[len(P_i) : len(Q_i)]                          when P_i ⊑ Q_i ⊑ full

    <|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>\\n
    |<------------------------------ P_1 ------------------------------------------------>|
    |<------------------------------ Q_1 ------------------------------------------------------------------>|
                                                                                           [  span_1 trained ]

and otherwise (templates that move the system prompt, drop earlier think blocks, end only the
conversation with an EOS) the answer is found by its text after the previous turns. `full` is
tokenised once (offsets mapping) and a token is trained when its characters overlap a trained span,
so the ids are exactly `apply_chat_template(messages)`'s. A record whose answer cannot be located,
or whose template raises, is rejected with the reason, never mis-trained. Templates without a
system role get the system text merged into the first user turn (templates.template_view).

Speed: many conversations are tokenised in one batched tokenizer call and the overlap test runs as
array arithmetic over all their tokens at once (`tokenize_conversations`); `tokenize_conversation`
is the same code for one conversation, so there is a single implementation to trust.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from lmtune.tokenize.spans import SpanError, locate_turns
from lmtune.tokenize.templates import template_view

IGNORE = -100


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def num_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


class MaskingError(Exception):
    """A conversation that cannot be tokenised into a useful training sample."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def render(tokenizer: Any, messages: list[dict], tools: list | None, *, generation_prompt: bool) -> str:
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": generation_prompt}
    if tools:
        kwargs["tools"] = tools
    return tokenizer.apply_chat_template(messages, **kwargs)


class ChatRenderer:
    """`render`, for many calls with one tokenizer: the same strings, about half the time.

    Why: masking renders every conversation two or more times, and each `apply_chat_template` call
    re-resolves the template, rebuilds the special-token map and deep-converts every message and tool
    through transformers' normalisers (objects to dicts, None keys dropped, rich objects replaced).
    The messages masking renders are fresh plain dicts of JSON values (`to_template_messages` builds
    them), for which those conversions change nothing, so this renders with transformers' own
    compiled, sandboxed template and the same variables it would pass. tests/tokenize/test_masking.py
    checks the strings are identical on the benchmark set, multi-turn and tool-calling records, and
    every renderer first checks itself on a probe conversation. Where that compiled template is not
    available (another transformers, a dict of named templates), the probe disagrees or fails, or the
    conversation is empty (apply_chat_template's own error), it falls back to `render`.
    """

    PROBE = ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"})

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.compiled = _compiled_template(getattr(tokenizer, "chat_template", None))
        self.variables = dict(tokenizer.special_tokens_map) if self.compiled is not None else {}
        if self.compiled is not None and not self._agrees_with_render():
            self.compiled = None

    def _agrees_with_render(self) -> bool:
        """Whether the fast path renders the probe exactly as `render` does (a template or tokenizer
        this shortcut does not fit, e.g. special tokens that are not plain strings, fails here)."""
        msgs = [dict(m) for m in self.PROBE]
        try:
            return all(
                self(msgs[:n], None, generation_prompt=gen)
                == render(self.tokenizer, msgs[:n], None, generation_prompt=gen)
                for n, gen in ((1, True), (2, False))
            )
        except Exception:  # noqa: BLE001 - a template that rejects the probe just takes the standard path
            return False

    def __call__(self, messages: list[dict], tools: list | None, *, generation_prompt: bool) -> str:
        if self.compiled is None or not messages:
            return render(self.tokenizer, messages, tools, generation_prompt=generation_prompt)
        return self.compiled.render(
            messages=messages,
            tools=tools or None,
            documents=None,
            add_generation_prompt=generation_prompt,
            **self.variables,
        )


def _compiled_template(template: Any) -> Any:
    """transformers' compiled (cached, sandboxed) template for `template`, or None if unavailable."""
    if not isinstance(template, str):
        return None
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        return None
    return _compile_jinja_template(template)


def trained_turns(messages: list[dict], train_on: str) -> list[int]:
    """Indexes of the assistant messages that carry loss.

    A per-message `weight` (OpenAI fine-tuning format) wins over the policy: 0 never trains,
    1 always does.
    """
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    chosen = []
    for i in assistant:
        weight = messages[i].get("weight")
        if weight is not None:
            if weight:
                chosen.append(i)
        elif train_on in ("all", "all_tokens") or (train_on == "last" and i == assistant[-1]):
            chosen.append(i)
    return chosen


def trained_char_spans(
    tokenizer: Any,
    messages: list[dict],
    tools: list | None,
    turns: list[int],
    renderer: ChatRenderer | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the character spans of the trained assistant turns (spans.py)."""
    draw = renderer or ChatRenderer(tokenizer)
    tmsgs, ttools, index = template_view(messages, tools, tokenizer)
    try:
        full = draw(tmsgs, ttools, generation_prompt=False)
        spans = locate_turns(full, draw, tmsgs, ttools, [index[t] for t in turns if index[t] is not None])
    except SpanError as err:
        raise MaskingError(err.reason, str(err)) from None
    except Exception as err:  # noqa: BLE001 - anything the model's template raises is about this record
        raise template_error(err) from None
    return full, spans


def template_error(err: Exception) -> MaskingError:
    """A MaskingError for an exception raised while rendering a conversation with the chat template:
    its own message (raise_exception's text, a jinja2 error, a TypeError from template code) and a fix."""
    text = str(err).strip() or type(err).__name__
    kind = "" if type(err).__name__ == "TemplateError" else f"{type(err).__name__}: "
    hint = (
        "make the record fit what the template expects (e.g. roles alternating user/assistant, fields it "
        "reads such as tools or tool_calls present)"
    )
    if isinstance(err, TypeError) and "NoneType" in text:
        hint = (
            "the template reads a field this record lacks (tools, tool_calls, content?); add it to the record"
        )
    return MaskingError(
        "template_error",
        f"the model's chat template raised an error on this record: {kind}{text}. Fix: {hint}, or set "
        "data.template (chatml or alpaca) to use a fallback template",
    )


def tokenize_conversation(
    tokenizer: Any,
    messages: list[dict],
    *,
    tools: list | None = None,
    max_length: int = 1024,
    train_on: str = "all",
) -> Tokenized:
    """Token ids and labels (-100 where not trained) for one canonical conversation.

    Raises MaskingError when nothing would be trained (e.g. truncation cut every answer).
    """
    (out,) = tokenize_conversations(tokenizer, [(messages, tools)], max_length=max_length, train_on=train_on)
    if isinstance(out, MaskingError):
        raise out
    return out


# Conversations per tokenizer call: large enough that the fast tokenizer's per-call overhead vanishes and
# its threads have work, small enough that one chunk's offsets stay a few MB.
CHUNK = 1024


def tokenize_conversations(
    tokenizer: Any,
    conversations: Sequence[tuple[list[dict], list | None]],
    *,
    max_length: int = 1024,
    train_on: str = "all",
) -> list[Tokenized | MaskingError]:
    """`tokenize_conversation` for many (messages, tools) pairs, in their order.

    Each entry is the sample or the MaskingError saying why it cannot be trained on, so a caller can
    count rejects without one bad record stopping the rest. Results are identical to calling
    `tokenize_conversation` one by one (the same renderings and offsets); only the tokenizer is
    called once per chunk and labels are computed without a Python loop over tokens.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    renderer = ChatRenderer(tokenizer)
    results: list[Tokenized | MaskingError | None] = [None] * len(conversations)
    texts: list[str] = []
    spans: list[list[tuple[int, int]]] = []
    where: list[int] = []
    for k, (messages, tools) in enumerate(conversations):
        turns = trained_turns(messages, train_on)
        if not turns:
            results[k] = MaskingError(
                "no_trained_turn", "no assistant message is marked for training (weight 0?)"
            )
            continue
        try:
            full, trained = trained_char_spans(tokenizer, messages, tools, turns, renderer)
        except MaskingError as err:
            results[k] = err
            continue
        texts.append(full)
        spans.append(trained)
        where.append(k)
    for lo in range(0, len(texts), CHUNK):
        hi = lo + CHUNK
        outs = _label_chunk(tokenizer, texts[lo:hi], spans[lo:hi], max_length, train_on)
        for k, out in zip(where[lo:hi], outs):
            results[k] = out
    return results  # type: ignore[return-value]  # every slot was filled above


def _label_chunk(
    tokenizer: Any, texts: list[str], spans: list[list[tuple[int, int]]], max_length: int, train_on: str
) -> list[Tokenized | MaskingError]:
    """Tokenise `texts` in one call and label the tokens that overlap their conversation's spans."""
    enc = tokenizer(
        texts,
        add_special_tokens=False,  # the template writes any BOS itself; we truncate ourselves
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )
    id_lists: list[list[int]] = enc["input_ids"]
    lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    total = int(lengths.sum())
    offsets = np.fromiter(
        chain.from_iterable(chain.from_iterable(enc["offset_mapping"])), dtype=np.int64, count=2 * total
    ).reshape(total, 2)
    if train_on == "all_tokens":
        trained = np.ones(total, dtype=bool)
    else:
        trained = _overlaps(offsets, lengths, np.fromiter(map(len, texts), dtype=np.int64), spans)
    ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=total)
    labels = np.where(trained, ids, IGNORE).tolist()
    first = np.concatenate(([0], np.cumsum(lengths)))  # conversation c's tokens: first[c]:first[c+1]
    trained_before = np.concatenate(([0], np.cumsum(trained)))
    out: list[Tokenized | MaskingError] = []
    for c, ids_c in enumerate(id_lists):
        keep = min(len(ids_c), max_length)
        lo = int(first[c])
        if trained_before[lo + keep] == trained_before[lo]:
            out.append(
                MaskingError(
                    "no_trained_tokens",
                    f"after truncation to max_length={max_length} no trained (assistant) token is left; "
                    "raise data.max_length or shorten the prompt",
                )
            )
            continue
        out.append(Tokenized(list(ids_c[:keep]), labels[lo : lo + keep], len(ids_c) > max_length))
    return out


def _overlaps(
    offsets: np.ndarray, lengths: np.ndarray, text_lengths: np.ndarray, spans: list[list[tuple[int, int]]]
) -> np.ndarray:
    """For every token, whether its characters [start, end) overlap a trained span of its own
    conversation: `start < b and end > a` for some span (a, b), exactly as a per-token loop would say.

    All conversations are laid on one character axis, conversation c from base[c], with a gap of one
    character so nothing of one can touch the next. Overlapping spans are merged (this changes no
    answer: a token overlaps the union of two overlapping spans iff it overlaps one of them); merely
    touching spans are kept apart, so a zero-width token between them stays untrained as before.
    The spans are then disjoint and sorted, and for a token the only candidate is the first span that
    ends after the token starts (searchsorted); it overlaps iff that span begins before the token ends.
    """
    base = np.concatenate(([0], np.cumsum(text_lengths + 1)[:-1]))
    starts_a, ends_b = [], []
    for c, conv_spans in enumerate(spans):
        for a, b in _merge_overlapping(conv_spans):
            starts_a.append(a + int(base[c]))
            ends_b.append(b + int(base[c]))
    if not starts_a:
        return np.zeros(len(offsets), dtype=bool)
    a_arr, b_arr = np.asarray(starts_a, dtype=np.int64), np.asarray(ends_b, dtype=np.int64)
    token_base = np.repeat(base, lengths)
    start, end = offsets[:, 0] + token_base, offsets[:, 1] + token_base
    j = np.searchsorted(b_arr, start, side="right")
    found = j < len(b_arr)
    out = np.zeros(len(offsets), dtype=bool)
    out[found] = a_arr[j[found]] < end[found]
    return out


def _merge_overlapping(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted spans with overlapping ones joined; touching ones stay apart (see `_overlaps`)."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged
