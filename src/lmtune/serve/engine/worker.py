"""The one thread that runs every served model's generation, and `in_fresh_thread` for loading.

Why one thread for all the model work of a process: torch runs each CPU operation on an OpenMP
thread team, and GNU OpenMP (libgomp) gives every OS thread that starts parallel work a team of its
own, kept until that thread exits. With two such threads on a 2-core machine (say the main thread
that loaded the model and a generation thread) libgomp counts more threads than cores and lets its
idle workers spin only briefly before sleeping (its "throttled" spin count), so each of the many
small operations of a decoding step waits for a sleeping worker to wake (CPU use fell from 2.0 to
1.3 cores while the speed halved). Measured on a 2-core EPYC (bfloat16 SmolLM2-135M, greedy, batch 1):
26.9 tokens/s with one team, 13-18 with two; `OMP_WAIT_POLICY=active` makes it worse (10.6: four
spinning threads on two cores). So the models are loaded in a thread that exits before serving
starts (`in_fresh_thread`), and one `Worker` thread runs every scheduler in turn: one team in the
process, and two models never fight over the same cores with two teams.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from lmtune.serve.engine.scheduler import Scheduler

T = TypeVar("T")


class Worker:
    """Runs its schedulers' rounds (admit, prefill chunk, decoding step) one after another, in one
    thread started at the first request and ended when the last scheduler closes."""

    def __init__(self) -> None:
        self.lock = threading.Condition()  # shared by the schedulers: one wake-up for any new work
        self.schedulers: list[Scheduler] = []
        self._thread: threading.Thread | None = None

    def add(self, scheduler: Scheduler) -> None:
        with self.lock:
            self.schedulers.append(scheduler)

    def running(self) -> bool:
        with self.lock:  # reentrant: schedulers ask while holding it
            return self._thread is not None

    def start(self) -> None:
        """Start the thread if it is not running (called with `lock` held)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lmtune-generation", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self.lock:
                    while not any(s.closed or s.has_work() for s in self.schedulers):
                        self.lock.wait()
                    for scheduler in [s for s in self.schedulers if s.closed]:
                        scheduler.fail_all(RuntimeError("the server is shutting down"))
                        self.schedulers.remove(scheduler)
                        scheduler.stopped.set()
                    if not self.schedulers:
                        self._thread = None
                        return
                    busy = [s for s in self.schedulers if s.has_work()]
                for scheduler in busy:
                    scheduler.tick()


def in_fresh_thread(fn: Callable[[], T]) -> T:
    """`fn()` run in a new thread that then exits, so its OpenMP team goes with it (module doc)."""
    result: list[Any] = []

    def target() -> None:
        try:
            result.append((True, fn()))
        except BaseException as err:  # handed to the caller as if raised here
            result.append((False, err))

    thread = threading.Thread(target=target, name="lmtune-load", daemon=True)  # Ctrl+C is not held up
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value
