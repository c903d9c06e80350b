"""Everything the emulator remembers: tasks, uploaded images and webhook attempts.

Tasks and uploads are kept for the life of the process and, with a state file
(state.py), across restarts; webhook attempts are kept in memory only, up to
`max_records` (oldest dropped first). The `view()`s are what the `/_emulator`
pages show: webhook URLs redacted, images summarised (never their bytes).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime

from .errors import ApiError
from .images import DecodedImage
from .redaction import redact_url
from .state import StateFile


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
    image: dict | list[dict] | None = None  # DecodedImage.summary() (a list for inputImages); never the pixels
    received_at: float = field(default_factory=time.time)
    status: str = "processing"  # processing | success | error
    result: dict | None = None  # the data item, without status
    error: ApiError | None = None
    completed_at: float | None = None
    webhook: str = "none"  # none | pending | dropped | delivered | failed
    copies: int = 0
    copies_done: int = 0

    def saved(self) -> dict:
        """The record as the state file keeps it: the webhook URL's secrets only while the webhook is to be sent."""
        saved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        saved["error"] = None if self.error is None else self.error.saved()
        if self.webhook_url and self.webhook in ("delivered", "failed", "dropped"):
            saved["webhook_url"] = redact_url(self.webhook_url)
        return saved

    @classmethod
    def restore(cls, saved: dict) -> TaskRecord:
        error = saved.get("error")
        return cls(**{**saved, "error": None if error is None else ApiError(**error)})

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
    """Thread-safe records, written through to the state file when there is one."""

    def __init__(self, max_attempts: int, state: StateFile | None = None,
                 decode_upload: Callable[[bytes], DecodedImage] | None = None) -> None:
        self._lock = threading.Lock()
        self._state, self._decode_upload = state, decode_upload
        self._tasks: dict[str, TaskRecord] = {}
        self._images: dict[str, DecodedImage] = {}
        self._attempts: deque[dict] = deque(maxlen=max_attempts)
        if state is not None:
            for saved in state.tasks():
                record = TaskRecord.restore(saved)
                self._tasks[record.task_uuid] = record

    def _save(self, record: TaskRecord) -> None:
        if self._state is not None:
            self._state.save_task(record.task_uuid, record.received_at, record.saved())

    def claim(self, record: TaskRecord, images: list[DecodedImage] = ()) -> bool:
        """Add the task unless its UUID is known already (then False: conflictTaskUUID).

        The `images` are kept in the state file until the task is finished, so that it can finish after a restart.
        """
        with self._lock:
            if record.task_uuid in self._tasks:
                return False
            self._tasks[record.task_uuid] = record
            if self._state is not None:
                self._state.save_task(record.task_uuid, record.received_at, record.saved(),
                                      [(image.source, image.data) for image in images])
            return True

    def task(self, task_uuid: str) -> TaskRecord | None:
        with self._lock:
            return self._tasks.get(task_uuid)

    def finish(self, record: TaskRecord, result: dict | None, error: ApiError | None) -> None:
        with self._lock:
            record.result, record.error = result, error
            record.status = "success" if error is None else "error"
            record.completed_at = time.time()
            if self._state is not None:
                self._state.finish_task(record.task_uuid, record.received_at, record.saved())

    def unfinished(self) -> list[tuple[TaskRecord, list[tuple[str, bytes]]]]:
        """Tasks still processing (after a restart: cut off by it), with their images' (source, bytes)."""
        with self._lock:
            records = [r for r in self._tasks.values() if r.status == "processing"]
            return [(r, self._state.pending_images(r.task_uuid) if self._state else []) for r in records]

    def webhooks_pending(self) -> list[TaskRecord]:
        """Finished tasks whose webhook was neither delivered nor given up on (after a restart: cut off by it)."""
        with self._lock:
            return [r for r in self._tasks.values() if r.status != "processing" and r.webhook == "pending"]

    def webhook_planned(self, record: TaskRecord, copies: int) -> None:
        with self._lock:
            record.copies, record.copies_done = copies, 0
            record.webhook = "pending" if copies else "dropped"
            self._save(record)

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
            self._save(record)

    def add_image(self, image_uuid: str, image: DecodedImage) -> None:
        with self._lock:
            self._images[image_uuid] = image
            if self._state is not None:
                self._state.save_upload(image_uuid, image.data)

    def image(self, image_uuid: str) -> DecodedImage | None:
        with self._lock:
            image = self._images.get(image_uuid)
            if image is None and self._state is not None and self._decode_upload is not None:
                data = self._state.upload(image_uuid)
                if data is not None:
                    image = self._images[image_uuid] = self._decode_upload(data)
            return image

    def add_attempt(self, attempt: dict) -> None:
        with self._lock:
            self._attempts.append(attempt)

    def attempts(self, task_uuid: str | None = None) -> list[dict]:
        with self._lock:
            return [dict(a) for a in self._attempts if task_uuid is None or a["taskUUID"] == task_uuid]

    def tasks(self, task_uuid: str | None = None) -> list[dict]:
        with self._lock:
            return [r.view() for r in self._tasks.values() if task_uuid is None or r.task_uuid == task_uuid]

    def close(self) -> None:
        with self._lock:
            if self._state is not None:
                self._state.close()
                self._state = None
