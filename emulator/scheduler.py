"""A small timer wheel: a heap of due calls run by a fixed set of worker threads."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Scheduler:
    """Runs `fn(*args)` at or after a monotonic due time, on one of `workers` daemon threads.

    Calls due at the same time run in the order they were scheduled (as far as
    the workers' concurrency lets them). `stop()` discards calls not yet started.
    """

    def __init__(self, workers: int, name: str) -> None:
        self._heap: list[tuple[float, int, Callable, tuple]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._running = True
        self._busy = 0
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def call_later(self, delay_s: float, fn: Callable, *args) -> None:
        self.call_at(time.monotonic() + max(0.0, delay_s), fn, *args)

    def call_at(self, due: float, fn: Callable, *args) -> None:
        with self._cond:
            if not self._running:
                return
            heapq.heappush(self._heap, (due, next(self._seq), fn, args))
            self._cond.notify()

    def pending(self) -> int:
        """Calls waiting or running."""
        with self._cond:
            return len(self._heap) + self._busy

    def stop(self, timeout: float = 5.0) -> int:
        """Stop the workers, waiting up to `timeout` for running calls; return how many calls were discarded."""
        with self._cond:
            self._running = False
            discarded = len(self._heap)
            self._heap.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return discarded

    def _next(self) -> tuple[Callable, tuple] | None:
        with self._cond:
            while self._running:
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    _, _, fn, args = heapq.heappop(self._heap)
                    self._busy += 1
                    if self._heap:
                        self._cond.notify()  # another call may be due too
                    return fn, args
                self._cond.wait(self._heap[0][0] - now if self._heap else None)
            return None

    def _work(self) -> None:
        while (job := self._next()) is not None:
            fn, args = job
            try:
                fn(*args)
            except Exception:
                log.exception("scheduled call %s failed", getattr(fn, "__qualname__", fn))
            finally:
                with self._cond:
                    self._busy -= 1
