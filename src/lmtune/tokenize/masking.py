"""Render a conversation with the chat template and decide, token by token, what is trained.

The rule: an assistant turn is trained on exactly the text the model has to produce after the
generation prompt, up to where the next turn would begin, end-of-turn token included, so the
tuned model learns to stop. Everything else (system prompt, user and tool turns, the template's
injected default system prompt, role headers, padding) gets label -100.

How the trained spans are found, without knowing anything template-specific:

    full   = render(messages)                                   the whole conversation
    P_i    = render(messages[:i], add_generation_prompt=True)   everything before answer i
    Q_i    = render(messages[:i+1])                             ... and answer i itself
    span_i = full[len(P_i) : len(Q_i)]                          requires P_i ⊑ Q_i ⊑ full

    <|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>\\n
    |<------------------------------ P_1 ------------------------------------------------>|
    |<------------------------------ Q_1 ------------------------------------------------------------------>|
                                                                                           [  span_1 trained ]

`full` is tokenised once (offsets mapping) and a token is trained when its characters overlap a
trained span. A template whose renderings are not prefixes of each other (one that rewrites earlier
turns) cannot be masked this way and the record is rejected with that reason, never mis-trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmtune.tokenize.templates import to_template_messages

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
    tokenizer: Any, messages: list[dict], tools: list | None, turns: list[int]
) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the character spans of the trained assistant turns."""
    tmsgs, ttools = to_template_messages(messages, tools, tokenizer)
    full = render(tokenizer, tmsgs, ttools, generation_prompt=False)
    shift = len(tmsgs) - len(messages)  # the tools fallback may insert a system message first
    spans = []
    for i in (t + shift for t in turns):
        prompt = render(tokenizer, tmsgs[:i], ttools, generation_prompt=True)
        upto = render(tokenizer, tmsgs[: i + 1], ttools, generation_prompt=False)
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise MaskingError(
                "template_not_prefix_stable",
                f"the chat template renders turn {i} differently inside the full conversation than on "
                "its own, so trained tokens cannot be located safely; set data.template (chatml or "
                "alpaca) to use a prefix-stable template",
            )
        if len(upto) > len(prompt):
            spans.append((len(prompt), len(upto)))
    return full, spans


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
    turns = trained_turns(messages, train_on)
    if not turns:
        raise MaskingError("no_trained_turn", "no assistant message is marked for training (weight 0?)")
    full, spans = trained_char_spans(tokenizer, messages, tools, turns)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True, verbose=False)  # we truncate
    ids: list[int] = list(enc["input_ids"])
    if train_on == "all_tokens":
        labels = list(ids)
    else:
        labels = [IGNORE] * len(ids)
        for t, (start, end) in enumerate(enc["offset_mapping"]):
            if any(start < b and end > a for a, b in spans):
                labels[t] = ids[t]
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    out = Tokenized(ids, labels, truncated)
    if out.num_trained == 0:
        raise MaskingError(
            "no_trained_tokens",
            f"after truncation to max_length={max_length} no trained (assistant) token is left; "
            "raise data.max_length or shorten the prompt",
        )
    return out
