"""Where each trained assistant turn lies in the one rendering of the whole conversation.

The whole conversation is rendered once (`full`, exactly what the model sees) and tokenised once;
this module only says which *characters* of `full` are trained. For assistant message i:

    P_i = render(messages[:i], generation prompt)   everything the model is given before answer i
    Q_i = render(messages[:i+1])                    ... plus answer i, rendered as the last turn
    A_i = Q_i after its common prefix with P_i      what the model writes for turn i (as the last turn):
                                                    reasoning the template shows, content, tool calls,
                                                    end-of-turn token(s)

and the span is found by the first of these that applies:

    1. prefix-stable    P_i ⊑ Q_i ⊑ full                 span = full[len(P_i) : len(Q_i)]
    2. moved elsewhere  A_i occurs in full after cursor   span = that occurrence
    3. rewritten        the answer text occurs right after a generation header (no other header in
                        between; the header cut back at control-token boundaries if needed); span =
                        from that header's end, through the answer, to the end of A_i's tail (the
                        end-of-turn text) as far as full repeats it
    else                the record is rejected (span_not_found / end_of_turn_not_found)

Case 1 is the common one (ChatML, Llama 3, Gemma, Granite, ...) and costs nothing extra. Case 2 covers
templates that move *other* text around (Mistral writes the system prompt into the last user turn, so
P_i of an earlier turn is not a prefix of full, but the answer itself is unchanged). Case 3 covers
templates that render an earlier turn differently from a last turn (Qwen3 writes an empty
`<think>\\n\\n</think>\\n\\n` or the reasoning before the last answer only; Phi-3.5 ends the
conversation, not each turn, with `<|endoftext|>`):

    full: ...<|im_start|>assistant\\nHello<|im_end|>\\n<|im_start|>user\\nMore<|im_end|>\\n<|im_start|>assistant\\n<think>\\nR\\n</think>\\n\\nBye<|im_end|>\\n
                                     [case 3        ]                                                 [case 1                                  ]
    A_1 = "<think>\\n\\n</think>\\n\\nHello<|im_end|>\\n" is not in full; "Hello" is, the header
    "<|im_start|>assistant\\n" (G_1 = P_1 minus render(messages[:1])) ends right before it, and
    the tail "<|im_end|>\\n" follows it.

`cursor` walks forward through full: past each located turn, and (in cases 2-3) past the user and
tool messages before the turn, found by their text, so an answer quoted inside a user message is
never taken for the answer. Whatever the template writes inside the span (a think block, a date
header is outside it) is trained; whatever it writes outside (system prompts, headers, injected
defaults) is context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Draw = Callable[..., str]


class SpanError(Exception):
    """A trained turn that cannot be located in the rendering (reason code + one sentence)."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def locate_turns(
    full: str, draw: Draw, msgs: list[dict[str, Any]], tools: list | None, turns: list[int]
) -> list[tuple[int, int]]:
    """Character spans in `full` of the assistant messages `turns` (template message indexes)."""
    spans: list[tuple[int, int]] = []
    cursor, done = 0, 0  # messages[:done] are behind the cursor
    for i in turns:
        prompt = draw(msgs[:i], tools, generation_prompt=True)
        # Q_i of the last message is the whole conversation: the very same call, so reuse `full`.
        upto = full if i + 1 == len(msgs) else draw(msgs[: i + 1], tools, generation_prompt=False)
        if len(prompt) >= cursor and upto.startswith(prompt) and full.startswith(upto):
            span = (len(prompt), len(upto))
        else:
            cursor = skip_messages(full, msgs, done, i, cursor)
            span = _find_rewritten(full, draw, msgs, tools, i, prompt, upto, cursor)
        if span[1] > span[0]:
            spans.append(span)
        cursor, done = max(cursor, span[1]), i + 1
    return spans


def skip_messages(full: str, msgs: list[dict[str, Any]], lo: int, hi: int, cursor: int) -> int:
    """The cursor moved past messages[lo:hi] that can be found by their text (system prompts are
    not used: templates move them, e.g. into the last user turn)."""
    for m in msgs[lo:hi]:
        if m["role"] == "system":
            continue
        for text in answer_texts(m):
            pos = full.find(text, cursor)
            if pos >= 0:
                cursor = pos + len(text)
                break
    return cursor


def answer_texts(m: dict[str, Any]) -> list[str]:
    """How a template may print a message's content: verbatim, trimmed, or (assistant) without a
    leading `<think>...</think>` block, which many templates drop from earlier turns; a tool call by
    its function's name (what follows it, the arguments and end of turn, is matched as the tail)."""
    content = m.get("content") or ""
    if not isinstance(content, str):
        return []
    out = [content, content.strip()]
    if "</think>" in content:
        out.append(content.split("</think>")[-1].strip())
    for call in m.get("tool_calls") or ():  # a tool call is found by its function's name
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            out.append(fn["name"])
    seen: list[str] = []
    for t in out:
        if t and t not in seen:
            seen.append(t)
    return seen


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _after_header(full: str, header: str, text: str, cursor: int) -> tuple[int, int] | None:
    """(span start, position of `text`) for the first `text` after the cursor that follows a
    generation header with no other header in between. The header is tried whole, then cut back at
    control-token or line boundaries: a reasoning template's generation prompt
    `<|im_start|>assistant\\n<think>\\n` opens only the last turn, earlier ones start with
    `<|im_start|>assistant\\n`. Where no header is written (Mistral: none) the text after the cursor."""
    cuts = [
        k
        for k in range(len(header), 0, -1)
        if k == len(header) or header[k - 1] in ">]}" or header[k - 1].isspace()
    ]
    seen = False
    for h in (header[:k] for k in cuts):
        first = full.find(h, cursor)
        if first < 0:
            continue
        seen = True
        a = full.find(text, first + len(h))
        if a >= 0 and full.find(h, first + len(h), a) < 0:
            return first + len(h), a
    a = -1 if seen else full.find(text, cursor)
    return (a, a) if a >= 0 else None


def _tail_match(source: str, text: str, full: str, b: int) -> tuple[str, int]:
    """The end-of-turn text after `text` in `source` (answer i as a last turn) and how much of it
    follows `text` in `full` at `b`. The last occurrence of `text` is tried first, earlier ones
    (a short answer that also occurs in the end-of-turn token) when it does not fit."""
    tail, pos = "", source.rfind(text)
    while pos >= 0:
        tail = source[pos + len(text) :]
        n = _clean_cut(tail, _common_prefix(tail, full[b : b + len(tail)]))
        if n or not tail:
            return tail, n
        pos = source.rfind(text, 0, pos + len(text) - 1) if pos > 0 else -1
    return tail, 0


def _clean_start(text: str, k: int) -> int:
    """`k` moved back to just after a control token, line or space, so a header that shares a few
    characters with what the conversation ends with (Phi-3.5's `<|assistant|>` after `<|end|>`, vs
    its closing `<|end|>`) is taken whole."""
    while k > 0 and not (text[k - 1] in ">]}" or text[k - 1].isspace()):
        k -= 1
    return k


def _clean_cut(tail: str, n: int) -> int:
    """`n`, or where a partial match of the end-of-turn text should stop: after its last complete
    control token or line (`<|end|>\\n<|` of `<|end|>\\n<|endoftext|>` against `<|end|>\\n<|user|>`
    keeps `<|end|>\\n`, so the next turn's header token is not trained)."""
    if n >= len(tail):
        return n
    for k in range(n, 0, -1):
        if tail[k - 1] in ">]}" or tail[k - 1].isspace():
            return k
    return n


def _find_rewritten(
    full: str,
    draw: Draw,
    msgs: list[dict[str, Any]],
    tools: list | None,
    i: int,
    prompt: str,
    upto: str,
    cursor: int,
) -> tuple[int, int]:
    answer = upto[_common_prefix(prompt, upto) :]
    if answer:  # case 2: the answer as a last turn, unchanged, somewhere after the cursor
        pos = full.find(answer, cursor)
        if pos >= 0:
            return pos, pos + len(answer)
    # case 3: the answer's text, searched right after a generation header (so a short answer is not
    # found inside a control token such as <|im_end|> before it); the span starts after that header.
    before = draw(msgs[:i], tools, generation_prompt=False) if i else ""
    k = len(before) if prompt.startswith(before) else _clean_start(prompt, _common_prefix(prompt, before))
    header = prompt[k:]  # the generation header
    for text in answer_texts(msgs[i]):
        found = _after_header(full, header, text, cursor)
        if found is None:
            continue
        start, a = found
        b = a + len(text)
        tail, n = _tail_match(answer if text in answer else upto, text, full, b)
        if tail and n == 0:
            raise SpanError(
                "end_of_turn_not_found",
                f"the chat template writes assistant message {i} without the end-of-turn text it writes "
                f"after a last turn ({tail[:40]!r}), so where the answer stops cannot be trained",
            )
        return start, b + n
    raise SpanError(
        "span_not_found",
        f"assistant message {i}'s text does not appear in the chat template's rendering of the whole "
        "conversation (the template drops or rewrites it), so it cannot be trained; check the message "
        "with `lmtune data inspect`, or set data.template (chatml or alpaca)",
    )
