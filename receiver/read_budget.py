"""A host-wide budget of readers' database work: at most READ_CONCURRENCY requests hold a connection at once.

The api processes of a host share READ_CONCURRENCY slots: files under
READ_SLOTS_DIR, each locked with flock(2) by the request that holds it. A
request takes a slot before it checks out a connection of the readers' engine
and gives it back when it returns the connection; the kernel frees the slot of a
process that exits, however it exits, so a killed worker never keeps one. A
request that finds every slot taken waits up to READ_QUEUE_MS, then is answered
503 with Retry-After (cause `read_budget`).

Why host-wide: on a host that also receives webhooks, the readers' queries
(PostgreSQL backends, which the api's niceness does not reach, or SQLite in the
api process) could otherwise take every core, however many api workers there
are; with the budget they take at most READ_CONCURRENCY of them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

FIRST_WAIT_S = 0.002
LONGEST_WAIT_S = 0.05
"""A waiting request looks for a free slot again after 2 ms, then ever less often, up to every 50 ms."""


class ReadBudgetExhausted(Exception):
    """Every slot of the read budget stayed taken for as long as a request may wait."""

    def __init__(self, slots: int, waited_ms: int):
        super().__init__(f"all {slots} READ_CONCURRENCY slots stayed busy for READ_QUEUE_MS ({waited_ms} ms)")
        self.slots = slots


class ReadBudget:
    """`slots` flock(2)-ed files under `directory`, shared by every process that names the same directory."""

    def __init__(self, directory: Path, slots: int, queue_ms: int):
        self.paths = [directory / f"slot-{n}" for n in range(slots)]
        self.queue_ms = queue_ms
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _try(self) -> int | None:
        """A descriptor holding a free slot's lock, or None when every slot is taken."""
        for path in random.sample(self.paths, len(self.paths)):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
        return None

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot while inside (a new open file each time: flock is per open file, not per thread)."""
        deadline = time.monotonic() + self.queue_ms / 1000
        pause = FIRST_WAIT_S
        fd = self._try()
        while fd is None:
            if time.monotonic() >= deadline:
                raise ReadBudgetExhausted(len(self.paths), self.queue_ms)
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, LONGEST_WAIT_S)
            fd = self._try()
        try:
            yield
        finally:
            os.close(fd)  # closing the last descriptor of the open file releases its lock


class BudgetedEngine:
    """The readers' engine with each `connect()` held under a slot of `budget`; anything else is the engine's."""

    def __init__(self, engine: sa.Engine, budget: ReadBudget):
        self.engine, self.budget = engine, budget

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        with self.budget.slot(), self.engine.connect() as conn:
            yield conn

    def __getattr__(self, name: str):
        return getattr(self.engine, name)
