"""Continuous batching: requests join and leave one running batch between decoding steps.

One `Scheduler` per loaded model (adapters of one base share it); one `Worker` thread runs every
scheduler of the process in turn (worker.py says why one thread). Between two decoding steps a
scheduler drops rows that finished or whose client went away, and admits waiting requests (up to
`max_batch` rows, in groups of at most `group_tokens` padded prompt tokens, so a crowd's first
requests get their first token early). Each group is prefilled together: prompts are left-padded to
one width and run in one forward (attention mask and position ids make each row see only its own
prompt, at its own positions), so 30 requests arriving at once cost a few batched forwards, not 30
in a row. A group wider than `prefill_tokens` tokens (rows x columns) is fed in chunks of columns,
and the running rows take a decoding step between two chunks, so a long prompt does not stall
everyone else's stream. After the last chunk each newcomer gets its first token and
the group's cache is merged into the batch. Then one step feeds every row its last token.

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
from lmtune.serve.engine.worker import Worker

_END = None  # put on a request's queue when it will get no more tokens
DEFAULT_PREFILL_TOKENS = 2048  # most prompt tokens (padding included) in one prefill forward
# Most prompt tokens (padding included) in one joining group: a crowd arriving at once is prefilled in
# successive groups, so the first ones get their first token after a fraction of the crowd's prompt
# work instead of after all of it (time to first token), while each group is still one wide forward.
DEFAULT_GROUP_TOKENS = 512


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

    def history(self) -> list[int]:
        """The ids a repetition penalty looks at: the prompt and what was generated so far."""
        return self.prompt + self.generated

    def cancel(self) -> None:
        """Stop generating (the client left, or a stop string was reached); takes effect between steps."""
        self.cancelled.set()


class Scheduler:
    """The model's one generation thread, running every admitted request in one batch."""

    def __init__(
        self,
        model: Any,
        eos_ids: Sequence[int],
        *,
        max_batch: int = 16,
        max_queue: int = 64,
        prefill_tokens: int = DEFAULT_PREFILL_TOKENS,
        group_tokens: int = DEFAULT_GROUP_TOKENS,
        worker: Worker | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.model, self.eos = model, set(eos_ids)
        self.max_batch, self.max_queue, self.prefill_tokens = max_batch, max_queue, max(1, prefill_tokens)
        self.group_tokens = max(1, group_tokens)
        self.pending: _Prefill | None = None  # newcomers being prefilled together, chunk by chunk
        self.waiting: deque[Request] = deque()
        self.rows: list[Request] = []  # the running batch, in cache row order
        self.worker = worker or Worker()  # the thread that runs this model (worker.py: why one)
        self.worker.add(self)
        self._wake = self.worker.lock
        self.closed = False
        self.stopped = threading.Event()  # set by the worker once a closed scheduler has failed its requests
        self._joining = 0  # taken from the queue, not yet in rows
        self.batchable: bool | None = None  # known after the first prefill: are the caches plain?
        self.steps = 0  # decoding steps run (a prefill is not a step): for tests and stats
        self.prefills = 0  # prefill forwards run (one per group, more when a long group is chunked)
        self.widest = 0  # most rows one step has run
        self._reset_batch()

    # ---- called from request threads -------------------------------------------------------------
    def submit(self, prompt: list[int], options: GenerationOptions, adapter: str | None = None) -> Request:
        """Queue a request; raises QueueFull when max_batch are running and max_queue are waiting."""
        from lmtune.serve.engine.sampling import new_generator

        request = Request(list(prompt), options, adapter, generator=new_generator(options))
        with self._wake:
            if self.closed:
                raise RuntimeError("the server is shutting down")
            taken = len(self.rows) + self._joining + sum(not r.cancelled.is_set() for r in self.waiting)
            if taken >= self.max_batch + self.max_queue:
                raise QueueFull
            self.waiting.append(request)
            self.worker.start()
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
        """Fail what is running or waiting ("shutting down") and leave the worker."""
        with self._wake:
            self.closed = True
            if not self.worker.running():  # else the worker fails them and sets `stopped`
                self.fail_all(RuntimeError("the server is shutting down"))
                if self in self.worker.schedulers:
                    self.worker.schedulers.remove(self)
                self.stopped.set()
            self._wake.notify_all()
        self.stopped.wait(timeout=30)

    # ---- the generation thread (worker.py runs `tick` while `has_work`) ------------------------------
    def has_work(self) -> bool:
        """Anything to do now (called with the lock held)."""
        return bool(self.rows or self.waiting or self.pending is not None)

    def tick(self) -> None:
        """One round: admit the next group, feed its next prefill chunk, take one decoding step."""
        with self._wake:
            self._drop_cancelled_waiting()
            if self.pending is None and self.waiting:
                joining = self._take_group()
                self._joining = len(joining)
            else:
                joining = []
        try:
            if joining:
                self.pending = _Prefill.start(joining, _device(self.model))
            if self.pending is not None:
                self._prefill_chunk()
            self._leave_finished()
            if self.rows:
                self._step()
                self._leave_finished()
        except Exception as err:  # a model error: every running request gets it, the server lives
            extra = self.pending.requests if self.pending is not None else joining
            self.pending = None
            self.fail_all(err, [r for r in extra if r not in self.rows])

    def _room(self) -> int:
        """How many waiting requests may start their prefill now."""
        if self.batchable:
            return self.max_batch - len(self.rows)
        # not known yet (the first prompt tells), or a cache that cannot be batched: one row at a time
        return 0 if self.rows else 1

    def _take_group(self) -> list[Request]:
        """The next joining group, first come first served: as many waiting requests as there is room
        for while the group's padded prompt block (rows x widest prompt) stays within `group_tokens`;
        always at least one."""
        group: list[Request] = []
        widest = 0
        for _ in range(min(self._room(), len(self.waiting))):
            width = max(widest, len(self.waiting[0].prompt))
            if group and (len(group) + 1) * width > self.group_tokens:
                break
            group.append(self.waiting.popleft())
            widest = width
        return group

    def _drop_cancelled_waiting(self) -> None:
        for request in [r for r in self.waiting if r.cancelled.is_set()]:
            self.waiting.remove(request)
            request.tokens.put(_END)

    def fail_all(self, err: BaseException, extra: Sequence[Request] = ()) -> None:
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

    def _prefill_chunk(self) -> None:
        """Feed the joining group's next columns (at most `prefill_tokens` tokens in all); after the
        last chunk, send each newcomer its first token and merge the group into the batch."""
        from transformers import DynamicCache

        from lmtune.serve.engine.sampling import choose

        group = self.pending
        assert group is not None
        if all(r.cancelled.is_set() for r in group.requests):  # every client left: skip the work
            self.pending = None
            with self._wake:
                self._joining = 0
            for request in group.requests:
                request.tokens.put(_END)
            return
        if group.cache is None:
            config = getattr(self.model, "config", None)
            group.cache = DynamicCache(config=config) if config is not None else DynamicCache()
        width = group.ids.shape[1]
        # chunking needs plain caches; the others take the prompt in one forward
        columns = max(1, self.prefill_tokens // len(group.requests)) if self.batchable else width
        end = min(width, group.done + columns)
        logits = self._forward(
            group.ids[:, group.done : end],
            group.mask[:, :end],
            group.positions[:, group.done : end],
            group.cache,
            [r.adapter for r in group.requests],
        )
        group.done = end
        self.prefills += 1
        if end < width:
            return  # the running rows take a step before the next chunk
        if self.batchable is None:
            self.batchable = _plain(group.cache)  # sliding-window or hybrid caches: rows never share a step
        live = [None if r.cancelled.is_set() else (r.options, r.history, r.generator) for r in group.requests]
        first = choose(logits, live)
        for request, entry, token in zip(group.requests, live, first, strict=True):
            if entry is not None and self._emit(request, token):
                request.cancel()  # done at its first token: leaves right after joining
        self.pending = None
        self._merge(group, first)

    def _merge(self, group: _Prefill, first: list[int]) -> None:
        """Add the prefilled group's rows to the batch: both sides left-padded to the wider one, one
        concatenation per layer."""
        import torch

        device = group.ids.device
        positions = torch.tensor([len(r.prompt) for r in group.requests], device=device)
        last = torch.tensor(first, device=device)
        cache, mask = group.cache, group.mask
        if self.rows:
            width = max(self.mask.shape[1], mask.shape[1])
            for old, new in zip(self.cache.layers, cache.layers, strict=True):
                old.keys = torch.cat([_pad_left(old.keys, width), _pad_left(new.keys, width)])
                old.values = torch.cat([_pad_left(old.values, width), _pad_left(new.values, width)])
            cache = self.cache
            mask = torch.cat([_pad_left(self.mask, width), _pad_left(mask, width)])
            positions = torch.cat([self.positions, positions])
            last = torch.cat([self.last, last])
        self.cache, self.mask, self.positions, self.last = cache, mask, positions, last
        with self._wake:
            self.rows.extend(group.requests)
            self._joining = 0

    def _step(self) -> None:
        """One token for every row."""
        import torch

        from lmtune.serve.engine.sampling import choose

        mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        logits = self._forward(
            self.last[:, None], mask, self.positions[:, None], self.cache, [r.adapter for r in self.rows]
        )
        self.mask, self.positions = mask, self.positions + 1
        self.steps += 1
        self.widest = max(self.widest, len(self.rows))
        live = [None if r.cancelled.is_set() else (r.options, r.history, r.generator) for r in self.rows]
        tokens = choose(logits, live)
        for request, entry, token in zip(self.rows, live, tokens, strict=True):
            if entry is not None and self._emit(request, token):
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


@dataclass(eq=False)
class _Prefill:
    """Newcomers prefilled together: their prompts left-padded to one width, fed chunk by chunk."""

    requests: list[Request]
    ids: Any  # [rows, width] long, left-padded with 0
    mask: Any  # [rows, width] long: 1 on prompt tokens
    positions: Any  # [rows, width] long: each token's position in its own prompt (0 on padding)
    cache: Any = None
    done: int = 0  # columns fed so far

    @classmethod
    def start(cls, requests: list[Request], device: Any) -> _Prefill:
        import torch

        width = max(len(r.prompt) for r in requests)
        ids = torch.zeros(len(requests), width, dtype=torch.long)
        mask = torch.zeros(len(requests), width, dtype=torch.long)
        for row, request in enumerate(requests):
            ids[row, width - len(request.prompt) :] = torch.tensor(request.prompt)
            mask[row, width - len(request.prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return cls(requests, ids.to(device), mask.to(device), positions.to(device))


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
