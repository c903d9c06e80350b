"""WebSocket sessions: where a task's answer goes when it is ready, across reconnections.

A session is named by its `connectionSessionUUID`. Every answer to a task goes
to the session's current connection: a connection that authenticates with the
UUID of an earlier one takes its place, so a result finished after a reconnect
reaches the new connection. While the session has no connection its answers are
dropped, not held: both SDKs send again what they had in flight (runware-sdk
takes the `conflictTaskUUID` of an async task sent again as its acknowledgement
and polls; answers held and replayed would arrive before that and make it fail).
Sessions beyond MAX_SESSIONS are forgotten, oldest first.

Frames: a reply holds either `{"data": [...]}` or `{"errors": [...]}`, never both
(runware-sdk reads only the errors of a frame that has both), and stays under
MAX_FRAME_BYTES, runware-sdk's default limit for an incoming message; a longer
reply is split.
"""

from __future__ import annotations

import threading
import uuid as uuidlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Protocol

import orjson

from .errors import ApiError
from .scheduler import Scheduler

MAX_FRAME_BYTES = 1024 * 1024
MAX_SESSIONS = 10_000


class Sink(Protocol):
    def send(self, frame: bytes) -> bool: ...  # False: the connection is gone
    def close(self, code: int, reason: str) -> None: ...


def frames(outcomes: list[dict | ApiError]) -> Iterator[bytes]:
    """The frames answering some outcomes: data items, then error items, each under MAX_FRAME_BYTES."""
    groups = (("data", [orjson.dumps(o) for o in outcomes if isinstance(o, dict)]),
              ("errors", [orjson.dumps(o.item()) for o in outcomes if isinstance(o, ApiError)]))
    for key, items in groups:
        head, chunk, size = f'{{"{key}":['.encode(), [], 0
        for item in items:
            if chunk and len(head) + size + len(item) + 2 > MAX_FRAME_BYTES:
                yield head + b",".join(chunk) + b"]}"
                chunk, size = [], 0
            chunk.append(item)
            size += len(item) + 1
        if chunk:
            yield head + b",".join(chunk) + b"]}"


class Session:
    def __init__(self) -> None:
        self.uuid = str(uuidlib.uuid4())
        self._lock = threading.Lock()
        self._sink: Sink | None = None

    def answer(self, *outcomes: dict | ApiError) -> None:
        """Send outcomes to the session's current connection, if it has one."""
        with self._lock:
            sink = self._sink
        if sink is not None:
            for frame in frames(list(outcomes)):
                sink.send(frame)

    def attach(self, sink: Sink) -> None:
        """Make `sink` the session's connection."""
        with self._lock:
            self._sink = sink

    def detach(self, sink: Sink) -> None:
        with self._lock:
            if self._sink is sink:
                self._sink = None


class Sessions:
    """Every session, the live connections, and a thread for results pushed after a delay."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._sinks: set[Sink] = set()
        self.pusher = Scheduler(1, "push")

    def open(self, resume: object = None) -> Session:
        """The session named `resume` when it is known, else a new one."""
        with self._lock:
            session = self._sessions.get(resume) if isinstance(resume, str) else None
            if session is None:
                session = Session()
                self._sessions[session.uuid] = session
                if len(self._sessions) > MAX_SESSIONS:
                    self._sessions.popitem(last=False)
            self._sessions.move_to_end(session.uuid)
            return session

    def connected(self, sink: Sink) -> None:
        with self._lock:
            self._sinks.add(sink)

    def disconnected(self, sink: Sink) -> None:
        with self._lock:
            self._sinks.discard(sink)

    def close(self) -> int:
        """Close every connection (going away) and stop the pusher; return the pushes discarded."""
        with self._lock:
            sinks = list(self._sinks)
        for sink in sinks:
            sink.close(1001, "the emulator is stopping")
        return self.pusher.stop()
