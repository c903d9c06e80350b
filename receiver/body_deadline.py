"""A deadline for a webhook's body, so that a slow sender cannot hold an intake thread for ever.

The intake's gunicorn workers are threaded (deploy/gunicorn.conf.py), and gunicorn's
worker timeout watches only a worker's main loop: a request trickling its body would
keep its thread for as long as the sender likes. So each request with a body gets
SECONDS (gunicorn's `timeout`, set in the worker by deploy/gunicorn.conf.py) to
deliver it; past that, a watchdog thread shuts the connection's socket down, the
blocked read returns, and the request ends with its connection closed, as a sync
worker's would at its timeout. Without gunicorn (SECONDS unset) nothing is watched.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

log = logging.getLogger(__name__)

SECONDS: float | None = None
"""How long a request may take to deliver its body (None: no deadline)."""

CHECK_EVERY_S = 0.25


class Watchdog:
    """The sockets of this process's requests still reading their body, with their deadlines."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deadlines: dict[int, tuple[float, socket.socket]] = {}
        self.thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, seconds: float) -> int:
        """Shut `sock` down if it is still watched `seconds` from now; returns the key to release it with."""
        key = id(sock)
        with self.lock:
            self.deadlines[key] = (time.monotonic() + seconds, sock)
            if self.thread is None:  # started on first use: after gunicorn's fork, in the worker
                self.thread = threading.Thread(target=self._run, name="body-deadline", daemon=True)
                self.thread.start()
        return key

    def release(self, key: int) -> None:
        with self.lock:
            self.deadlines.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(CHECK_EVERY_S)
            now = time.monotonic()
            with self.lock:
                late = [key for key, (deadline, _) in self.deadlines.items() if deadline <= now]
                expired = [self.deadlines.pop(key)[1] for key in late]
            for sock in expired:
                log.warning("a webhook's body did not arrive within %g s: its connection is closed", SECONDS)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError as exc:  # the sender closed it meanwhile: nothing left to cut
                    log.debug("connection already gone: %s", exc)


watchdog = Watchdog()
