"""Everything the emulator remembers, in memory: tasks, uploaded images and webhook attempts.

Nothing survives a restart. Tasks and uploads are kept for the life of the
process; webhook attempts are kept up to `max_records` (oldest dropped first).
The `view()`s are what the `/_emulator` pages show: webhook URLs redacted,
images summarised (never their bytes).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime

from .errors import ApiError
from .images import DecodedImage
from .redaction import redact_url


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class TaskRecord:
    """One accepted task and what became of it."""

    task_uuid: str
    task_type: str
    delivery: str  # sync | async | webhook
    include_cost: bool = False
    model: str | None = None
    webhook_url: str | None = None
    image: dict | None = None  # DecodedImage.summary(); the pixels are not kept
    received_at: float = field(default_factory=time.time)
    status: str = "processing"  # processing | success | error
    result: dict | None = None  # the data item, without status
    error: ApiError | None = None
    completed_at: float | None = None
    webhook: str = "none"  # none | pending | dropped | delivered | failed
    copies: int = 0
    copies_done: int = 0

    def view(self) -> dict:
        return {
            "taskUUID": self.task_uuid,
            "taskType": self.task_type,
            "delivery": self.delivery,
            "model": self.model,
            "includeCost": self.include_cost,
            "webhookURL": redact_url(self.webhook_url) if self.webhook_url else None,
            "image": self.image,
            "status": self.status,
            "result": self.result,
            "error": None if self.error is None else self.error.item(),
            "receivedAt": iso(self.received_at),
            "completedAt": None if self.completed_at is None else iso(self.completed_at),
            "webhook": self.webhook,
            "webhookCopies": self.copies,
        }


class Records:
    """Thread-safe in-memory records."""

    def __init__(self, max_attempts: int) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskRecord] = {}
        self._images: dict[str, DecodedImage] = {}
        self._attempts: deque[dict] = deque(maxlen=max_attempts)

    def claim(self, record: TaskRecord) -> bool:
        """Add the task unless its UUID is known already (then False: conflictTaskUUID)."""
        with self._lock:
            if record.task_uuid in self._tasks:
                return False
            self._tasks[record.task_uuid] = record
            return True

    def task(self, task_uuid: str) -> TaskRecord | None:
        with self._lock:
            return self._tasks.get(task_uuid)

    def finish(self, record: TaskRecord, result: dict | None, error: ApiError | None) -> None:
        with self._lock:
            record.result, record.error = result, error
            record.status = "success" if error is None else "error"
            record.completed_at = time.time()

    def webhook_planned(self, record: TaskRecord, copies: int) -> None:
        with self._lock:
            record.copies = copies
            record.webhook = "pending" if copies else "dropped"

    def webhook_finished(self, task_uuid: str, delivered: bool) -> None:
        """One copy of a task's webhook was delivered, or was given up on."""
        with self._lock:
            record = self._tasks.get(task_uuid)
            if record is None:
                return
            record.copies_done += 1
            if delivered:
                record.webhook = "delivered"
            elif record.copies_done >= record.copies and record.webhook != "delivered":
                record.webhook = "failed"

    def add_image(self, image_uuid: str, image: DecodedImage) -> None:
        with self._lock:
            self._images[image_uuid] = image

    def image(self, image_uuid: str) -> DecodedImage | None:
        with self._lock:
            return self._images.get(image_uuid)

    def add_attempt(self, attempt: dict) -> None:
        with self._lock:
            self._attempts.append(attempt)

    def attempts(self, task_uuid: str | None = None) -> list[dict]:
        with self._lock:
            return [dict(a) for a in self._attempts if task_uuid is None or a["taskUUID"] == task_uuid]

    def tasks(self, task_uuid: str | None = None) -> list[dict]:
        with self._lock:
            return [r.view() for r in self._tasks.values() if task_uuid is None or r.task_uuid == task_uuid]
