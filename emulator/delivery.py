"""Webhook delivery, the way a real sender behaves.

Each finished task with a `webhookURL` gets one delivery (plus extra copies
under the duplicate fault, or none under the drop fault). A delivery is POSTed
as JSON; a 2xx answer within `webhook_timeout_s` is success, anything else
(another status, a timeout, a refused connection, an injected failure) is a
failed attempt. After failed attempt n the next one waits

    min(backoff_cap_ms, backoff_base_ms * 2**(n-1)) * (0.5 + 0.5 * u),  u in [0, 1) from the seeded dice

(250 ms doubling up to 8 s by default, with jitter), until `max_attempts`
attempts have failed; then the delivery is given up. Every attempt is
recorded, with the webhook URL's secrets redacted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import requests

from .dice import Dice
from .errors import ApiError
from .records import Records
from .records import TaskRecord
from .records import iso
from .redaction import redact_text
from .redaction import redact_url
from .scheduler import Scheduler
from .settings import Settings

log = logging.getLogger(__name__)
MAX_EXTRA_COPIES = 3
COPY_GAP_MS = 100  # extra copies leave up to this long after the original
REORDER_STAGGER_S = 0.02  # gap between the releases of a shuffled group, so they arrive in that order
HEADERS = {"Content-Type": "application/json", "User-Agent": "runware-emulator"}


@dataclass(frozen=True)
class Delivery:
    """One copy of one task's webhook."""

    task_uuid: str
    task_type: str
    url: str
    body: bytes
    envelope: str  # wrapped | bare | errors
    copy: int


class Reorderer:
    """Collects deliveries into groups of `size` (or whatever arrived within `hold_s`), shuffles, releases them."""

    def __init__(self, size: int, hold_s: float, dice: Dice, scheduler: Scheduler,
                 release: Callable[[Delivery], None]) -> None:
        self._size, self._hold_s, self._dice = size, hold_s, dice
        self._scheduler, self._release = scheduler, release
        self._lock = threading.Lock()
        self._buffer: list[Delivery] = []
        self._generation = 0

    def add(self, delivery: Delivery) -> None:
        with self._lock:
            self._buffer.append(delivery)
            if len(self._buffer) < self._size:
                if len(self._buffer) == 1:
                    self._scheduler.call_later(self._hold_s, self._flush, self._generation)
                return
            group = self._take()
        self._shuffle_out(group)

    def _flush(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation or not self._buffer:
                return
            group = self._take()
        self._shuffle_out(group)

    def _take(self) -> list[Delivery]:
        group, self._buffer = self._buffer, []
        self._generation += 1
        return group

    def _shuffle_out(self, group: list[Delivery]) -> None:
        """Release the group in a seeded order that differs from the arrival order (when it can)."""
        order = sorted(group, key=lambda d: (d.task_uuid, d.copy))
        self._dice.rng("reorder", tuple((d.task_uuid, d.copy) for d in order)).shuffle(order)
        if len(order) > 1 and order == group:
            order = order[1:] + order[:1]
        for i, delivery in enumerate(order):
            self._scheduler.call_later(i * REORDER_STAGGER_S, self._release, delivery)


class WebhookSender:
    def __init__(self, settings: Settings, dice: Dice, records: Records) -> None:
        self.settings, self.faults, self.dice, self.records = settings, settings.faults, dice, records
        self.scheduler = Scheduler(settings.delivery_workers, "webhook")
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self._reorderer = None
        if self.faults.reorder > 1:
            self._reorderer = Reorderer(self.faults.reorder, self.faults.reorder_hold_ms / 1000, dice,
                                        self.scheduler, self._first_attempt)

    def send(self, record: TaskRecord, item: dict | None, error: ApiError | None) -> None:
        """Plan the webhook(s) of a finished task: its result `item`, or its `error`."""
        uuid, faults = record.task_uuid, self.faults
        if self.dice.chance(faults.drop_rate, "drop", uuid):
            self.records.webhook_planned(record, 0)
            log.info("webhook for task %s dropped (drop fault)", uuid)
            return
        copies = 1
        while copies <= MAX_EXTRA_COPIES and self.dice.chance(faults.duplicate_rate, "duplicate", uuid, copies):
            copies += 1
        self.records.webhook_planned(record, copies)
        for copy in range(copies):
            envelope, body = self._body(uuid, copy, item, error)
            delivery = Delivery(uuid, record.task_type, record.webhook_url or "", body, envelope, copy)
            delay_ms = faults.delay_ms + self.dice.unit("jitter", uuid, copy) * faults.jitter_ms
            if copy:
                delay_ms += self.dice.unit("copy-gap", uuid, copy) * COPY_GAP_MS
            target = self._reorderer.add if self._reorderer else self._first_attempt
            self.scheduler.call_later(delay_ms / 1000, target, delivery)

    def _body(self, uuid: str, copy: int, item: dict | None, error: ApiError | None) -> tuple[str, bytes]:
        if error is not None:
            return "errors", orjson.dumps({"errors": [error.item()]})
        envelope = self.faults.envelope
        if envelope == "mixed":
            envelope = "bare" if self.dice.chance(0.5, "envelope", uuid, copy) else "wrapped"
        return envelope, orjson.dumps(item if envelope == "bare" else {"data": [item]})

    def backoff_ms(self, delivery: Delivery, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (see the module docstring)."""
        s = self.settings
        ceiling = min(s.backoff_cap_ms, s.backoff_base_ms * 2 ** (attempt - 1))
        return ceiling * (0.5 + 0.5 * self.dice.unit("backoff", delivery.task_uuid, delivery.copy, attempt))

    def _first_attempt(self, delivery: Delivery) -> None:
        self._attempt(delivery, 1)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False  # deliver straight to the receiver, never through a proxy from the environment
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def _post(self, delivery: Delivery) -> tuple[str, int | None, str | None]:
        try:
            resp = self._session().post(delivery.url, data=delivery.body, headers=HEADERS,
                                        timeout=self.settings.webhook_timeout_s, allow_redirects=False)
        except requests.RequestException as exc:
            return "failed", None, redact_text(f"{type(exc).__name__}: {exc}", delivery.url)
        if 200 <= resp.status_code < 300:
            return "delivered", resp.status_code, None
        return "failed", resp.status_code, f"HTTP {resp.status_code}"

    def _attempt(self, delivery: Delivery, attempt: int) -> None:
        started, clock = time.time(), time.monotonic()
        if self.dice.chance(self.faults.webhook_fail_rate, "fail", delivery.task_uuid, delivery.copy, attempt):
            outcome, status, error = "injected-failure", None, "injected failure: the attempt was not sent"
        else:
            outcome, status, error = self._post(delivery)
        delivered = outcome == "delivered"
        gave_up = not delivered and attempt >= self.settings.max_attempts
        wait_ms = None if delivered or gave_up else self.backoff_ms(delivery, attempt)
        self.records.add_attempt({
            "taskUUID": delivery.task_uuid,
            "taskType": delivery.task_type,
            "url": redact_url(delivery.url),
            "copy": delivery.copy,
            "attempt": attempt,
            "envelope": delivery.envelope,
            "outcome": outcome,
            "status": status,
            "error": error,
            "at": iso(started),
            "elapsedMs": round((time.monotonic() - clock) * 1000, 1),
            "nextAttemptInMs": None if wait_ms is None else round(wait_ms, 1),
            "gaveUp": gave_up,
        })
        if delivered or gave_up:
            self.records.webhook_finished(delivery.task_uuid, delivered)
            if gave_up:
                log.warning("webhook for task %s given up after %d attempts", delivery.task_uuid, attempt)
            return
        self.scheduler.call_later(wait_ms / 1000, self._attempt, delivery, attempt + 1)

    def pending(self) -> int:
        return self.scheduler.pending()

    def close(self) -> int:
        """Stop sending; return how many scheduled calls were discarded."""
        discarded = self.scheduler.stop()
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
        return discarded
