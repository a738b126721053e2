"""Continuous batching: requests join and leave one running batch between decoding steps.

One `Scheduler` per loaded model (adapters of one base share it) owns the model in one thread.
Between two decoding steps it drops rows that finished or whose client went away, and admits
waiting requests (up to `max_batch` rows): each newcomer's prompt is run alone (its "prefill", so
its cache is exactly what one-at-a-time generation computes), its first token is sent at once, and
its cache is merged into the batch. Then one step feeds every row its last token.

Why not transformers' own continuous batching (`generate_batch` / `ContinuousBatchingManager`)? It
is built around paged attention and CUDA graphs with one generation config for the whole batch and
flattened rows, so there is no per-row PEFT adapter (`adapter_names=`), and per-request stop strings
and cancellation would have to be bolted on. This loop uses only public pieces (a model forward with
`past_key_values=DynamicCache`, `attention_mask`, `position_ids`) and works for any causal LM whose
cache layers are plain `DynamicLayer`s; other caches (sliding windows, hybrid) run one row at a time.

The batch's KV cache, per layer, is left-padded so every row's newest token sits in the last column
(the layout `model.generate` uses for a padded batch). Row 1 joined later with a shorter prompt:

        column:   0   1   2   3   4   5   6        attention_mask   position of next token
    row 0 (A):   a0  a1  a2  a3  a4  a5  a6        1 1 1 1 1 1 1    7
    row 1 (B):    .   .   .  b0  b1  b2  b3        0 0 0 1 1 1 1    4
    keys/values: [rows, heads, columns, head_dim]   (. = zeros, masked out)

A step appends one column (each row's last token at its own position id). A join pads the shorter
side on the left to the same width and stacks the rows; a leave drops the row and then any leading
columns no remaining row uses, so padding never outlives the longest row.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lmtune.infer.generate import GenerationOptions

_END = None  # put on a request's queue when it will get no more tokens


class QueueFull(Exception):
    """The server already has max_batch requests generating and max_queue waiting."""


@dataclass(eq=False)
class Request:
    """One generation in the scheduler: its prompt, settings, adapter, and the token ids it gets."""

    prompt: list[int]
    options: GenerationOptions
    adapter: str | None = None
    tokens: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # ids, an error, then _END
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    generator: Any = None
    queued_at: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        """Stop generating (the client left, or a stop string was reached); takes effect between steps."""
        self.cancelled.set()


class Scheduler:
    """The model's one generation thread, running every admitted request in one batch."""

    def __init__(
        self, model: Any, eos_ids: Sequence[int], *, max_batch: int = 16, max_queue: int = 64
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.model, self.eos = model, set(eos_ids)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.waiting: deque[Request] = deque()
        self.rows: list[Request] = []  # the running batch, in cache row order
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._joining = 0  # taken from the queue, not yet in rows
        self.batchable: bool | None = None  # known after the first prefill: are the caches plain?
        self.steps = 0  # decoding steps run (a prefill is not a step): for tests and stats
        self.widest = 0  # most rows one step has run
        self._reset_batch()

    # ---- called from request threads -------------------------------------------------------------
    def submit(self, prompt: list[int], options: GenerationOptions, adapter: str | None = None) -> Request:
        """Queue a request; raises QueueFull when max_batch are running and max_queue are waiting."""
        from lmtune.serve.engine.sampling import new_generator

        request = Request(list(prompt), options, adapter, generator=new_generator(options))
        with self._wake:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            taken = len(self.rows) + self._joining + sum(not r.cancelled.is_set() for r in self.waiting)
            if taken >= self.max_batch + self.max_queue:
                raise QueueFull
            self.waiting.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lmtune-scheduler", daemon=True)
                self._thread.start()
            self._wake.notify()
        return request

    def wake(self) -> None:
        with self._wake:
            self._wake.notify()

    def active(self) -> int:
        """Requests generating or waiting (cancelled ones leave at the next step boundary)."""
        with self._wake:
            return len(self.rows) + self._joining + len(self.waiting)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ---- the generation thread -------------------------------------------------------------------
    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._closed and not self.rows and not self.waiting:
                        self._wake.wait()
                    if self._closed:
                        self._fail_all(RuntimeError("the server is shutting down"))
                        return
                    self._drop_cancelled_waiting()
                    joining = []
                    while self.waiting and len(self.rows) + len(joining) < self.max_batch:
                        joining.append(self.waiting.popleft())
                    self._joining = len(joining)
                try:
                    prefilled: list[tuple[Request, Any, int]] = []
                    for i, request in enumerate(joining):
                        if (self.rows or prefilled) and self.batchable is False:  # one row at a time
                            with self._wake:
                                self.waiting.extendleft(reversed(joining[i:]))
                                self._joining = len(prefilled)
                            break
                        if (done := self._prefill(request)) is not None:
                            prefilled.append(done)
                    self._merge(prefilled)
                    self._leave_finished()
                    if self.rows:
                        self._step()
                        self._leave_finished()
                except Exception as err:  # a model error: every running request gets it, the server lives
                    self._fail_all(err, [r for r in joining if r not in self.rows])

    def _drop_cancelled_waiting(self) -> None:
        for request in [r for r in self.waiting if r.cancelled.is_set()]:
            self.waiting.remove(request)
            request.tokens.put(_END)

    def _fail_all(self, err: BaseException, extra: Sequence[Request] = ()) -> None:
        for request in [*self.rows, *self.waiting, *extra]:
            request.tokens.put(err)
            request.tokens.put(_END)
        self.rows, self.waiting, self._joining = [], deque(), 0
        self._reset_batch()

    def _reset_batch(self) -> None:
        self.cache: Any = None  # a DynamicCache whose rows are self.rows
        self.mask: Any = None  # [rows, columns] long: 1 where a column holds a real token
        self.positions: Any = None  # [rows] long: the position id of each row's next token
        self.last: Any = None  # [rows] long: each row's newest token, fed by the next step

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, adapters: list[str | None]) -> Any:
        kwargs: dict[str, Any] = {}
        if any(a is not None for a in adapters):  # PEFT's mixed-batch LoRA: one adapter name per row
            kwargs["adapter_names"] = [a if a is not None else "__base__" for a in adapters]
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        return out.logits[:, -1, :]

    def _emit(self, request: Request, token: int) -> bool:
        """Hand a token to its request; True when the request is done (end token or length)."""
        request.generated.append(token)
        request.tokens.put(token)
        return token in self.eos or len(request.generated) >= request.options.max_new_tokens

    def _prefill(self, request: Request) -> tuple[Request, Any, int] | None:
        """Run the prompt alone and send its first token: (request, its cache, its first token), or
        None when it is already done."""
        import torch
        from transformers import DynamicCache

        from lmtune.serve.engine.sampling import next_token

        if request.cancelled.is_set():
            self._left_early(request)
            return None
        config = getattr(self.model, "config", None)
        cache = DynamicCache(config=config) if config is not None else DynamicCache()
        ids = torch.tensor([request.prompt], device=_device(self.model))
        logits = self._forward(
            ids,
            torch.ones_like(ids),
            torch.arange(ids.shape[1], device=ids.device)[None],
            cache,
            [request.adapter],
        )
        token = next_token(logits[0], request.options, request.prompt, request.generator)
        if self._emit(request, token):
            self._left_early(request)
            return None
        if self.batchable is None:
            self.batchable = _plain(cache)  # sliding-window or hybrid caches: rows never share a step
        return request, cache, token

    def _merge(self, prefilled: list[tuple[Request, Any, int]]) -> None:
        """Add the newcomers' caches to the batch: every part left-padded to the widest, one
        concatenation per layer (not one per newcomer)."""
        import torch

        if not prefilled:
            return
        device = _device(self.model)
        lengths = [len(r.prompt) for r, _, _ in prefilled]
        masks = [torch.ones(1, n, dtype=torch.long, device=device) for n in lengths]
        positions = torch.tensor(lengths, device=device)
        last = torch.tensor([t for _, _, t in prefilled], device=device)
        caches = [c for _, c, _ in prefilled]
        if self.rows:
            caches.insert(0, self.cache)
            masks.insert(0, self.mask)
            positions = torch.cat([self.positions, positions])
            last = torch.cat([self.last, last])
        if len(caches) > 1:
            width = max(m.shape[1] for m in masks)
            for i, layer in enumerate(caches[0].layers):
                layer.keys = torch.cat([_pad_left(c.layers[i].keys, width) for c in caches])
                layer.values = torch.cat([_pad_left(c.layers[i].values, width) for c in caches])
            masks = [torch.cat([_pad_left(m, width) for m in masks])]
        self.cache, self.mask, self.positions, self.last = caches[0], masks[0], positions, last
        with self._wake:
            self.rows.extend(r for r, _, _ in prefilled)
            self._joining -= len(prefilled)

    def _left_early(self, request: Request) -> None:
        request.tokens.put(_END)
        with self._wake:
            self._joining -= 1

    def _step(self) -> None:
        """One token for every row."""
        import torch

        from lmtune.serve.engine.sampling import next_token

        mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        logits = self._forward(
            self.last[:, None], mask, self.positions[:, None], self.cache, [r.adapter for r in self.rows]
        )
        self.mask, self.positions = mask, self.positions + 1
        self.steps += 1
        self.widest = max(self.widest, len(self.rows))
        tokens = []
        for row, request in enumerate(self.rows):
            if request.cancelled.is_set():
                tokens.append(0)
                continue
            penalized = request.options.repetition_penalty != 1.0  # only then is the history read
            history = request.prompt + request.generated if penalized else []
            token = next_token(logits[row], request.options, history, request.generator)
            tokens.append(token)
            if self._emit(request, token):
                request.cancel()  # done: leaves at the next boundary
        self.last = torch.tensor(tokens, device=self.last.device)

    def _leave_finished(self) -> None:
        """Drop the rows that are done or whose client went away, and the columns nobody uses."""
        keep = [i for i, r in enumerate(self.rows) if not r.cancelled.is_set()]
        if len(keep) == len(self.rows):
            return
        with self._wake:
            for request in (r for r in self.rows if r.cancelled.is_set()):
                request.tokens.put(_END)
            self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self._reset_batch()
            return
        import torch

        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        first = int(mask.any(dim=0).nonzero()[0])  # leading columns that are padding in every row
        self.mask = mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]
        self.positions = self.positions.index_select(0, index)
        self.last = self.last.index_select(0, index)


def _plain(cache: Any) -> bool:
    """True when every layer is a plain growing DynamicLayer (no sliding window, no extra state)."""
    from transformers.cache_utils import DynamicLayer

    return cache is not None and all(type(layer) is DynamicLayer for layer in cache.layers)


def _pad_left(tensor: Any, width: int) -> Any:
    """`tensor` with zero columns added on the left of its sequence dim (-2 for keys/values, -1 for a
    mask) so that dim has `width` entries."""
    import torch

    dim = -1 if tensor.dim() == 2 else -2
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _device(model: Any) -> Any:
    return next(model.parameters()).device
