"""The emulator's memory on disk: task records, uploads, and the images of unfinished tasks, in one SQLite file.

With a state directory (`--state-dir`; `python -m emulator` uses `var/emulator`)
a restarted emulator knows every task of the runs before it, as Runware would:
getResponse answers them, their UUIDs stay taken (`conflictTaskUUID`), uploaded
images can still be captioned by UUID, a task cut off mid-processing finishes
after the restart, and a webhook still pending is sent again. Webhook attempts
are not kept. Records older than RETENTION_DAYS are deleted when the file is
opened (Runware keeps uploads for 30 days).

A webhook URL is kept with its secrets only until its webhook is delivered,
given up on or dropped; then with them redacted, and the old row's bytes are
overwritten (secure_delete). Every change is written at once (WAL,
synchronous=NORMAL: a crash of the process loses nothing; a crash of the
machine may lose the last changes). The callers serialise access (see
records.Records).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

FILE_NAME = "emulator.sqlite3"
RETENTION_DAYS = 30
SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (task_uuid TEXT PRIMARY KEY, received_at REAL NOT NULL, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS uploads (image_uuid TEXT PRIMARY KEY, received_at REAL NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS pending_images (task_uuid TEXT NOT NULL, position INTEGER NOT NULL, source TEXT NOT NULL,
                                           data BLOB NOT NULL, PRIMARY KEY (task_uuid, position));
"""


class StateFile:
    """The SQLite file under a state directory (created if missing)."""

    def __init__(self, directory: str) -> None:
        path = Path(directory)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path / FILE_NAME
        self.path.touch(mode=0o600)  # it holds webhook URLs with their tokens while their webhooks are pending
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(SCHEMA)
        cutoff = time.time() - RETENTION_DAYS * 86400
        with self._db:
            self._db.execute("DELETE FROM pending_images WHERE task_uuid IN "
                             "(SELECT task_uuid FROM tasks WHERE received_at < ?)", (cutoff,))
            self._db.execute("DELETE FROM tasks WHERE received_at < ?", (cutoff,))
            self._db.execute("DELETE FROM uploads WHERE received_at < ?", (cutoff,))

    def tasks(self) -> Iterator[dict]:
        """Every task record kept, as saved by `save_task`, oldest first."""
        for (record,) in self._db.execute("SELECT record FROM tasks ORDER BY received_at"):
            yield orjson.loads(record)

    def save_task(self, task_uuid: str, received_at: float, record: dict,
                  images: list[tuple[str, bytes]] | None = None) -> None:
        """Insert or replace a task record; `images` (source, bytes) are kept until `finish_task`."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO tasks VALUES (?, ?, ?)",
                             (task_uuid, received_at, orjson.dumps(record)))
            for position, (source, data) in enumerate(images or ()):
                self._db.execute("INSERT OR REPLACE INTO pending_images VALUES (?, ?, ?, ?)",
                                 (task_uuid, position, source, data))

    def finish_task(self, task_uuid: str, received_at: float, record: dict) -> None:
        """Save a finished task's record and forget the images it no longer needs."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO tasks VALUES (?, ?, ?)",
                             (task_uuid, received_at, orjson.dumps(record)))
            self._db.execute("DELETE FROM pending_images WHERE task_uuid = ?", (task_uuid,))

    def pending_images(self, task_uuid: str) -> list[tuple[str, bytes]]:
        rows = self._db.execute("SELECT source, data FROM pending_images WHERE task_uuid = ? ORDER BY position",
                                (task_uuid,))
        return [(source, bytes(data)) for source, data in rows]

    def save_upload(self, image_uuid: str, data: bytes) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO uploads VALUES (?, ?, ?)", (image_uuid, time.time(), data))

    def upload(self, image_uuid: str) -> bytes | None:
        row = self._db.execute("SELECT data FROM uploads WHERE image_uuid = ?", (image_uuid,)).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        self._db.close()
