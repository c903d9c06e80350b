"""The senders' side of the durability and failover tests, and their ledger against the store.

`Sender` posts results as Runware does, again until a 2xx; `assert_exactly_once`
checks that every delivery it was told was queued reached the store, once.
"""

from __future__ import annotations

import threading
import time

import requests
import sqlalchemy as sa

from store.schema import dead_letters
from store.schema import deliveries
from store.schema import tasks
from tests.helpers import WEBHOOK
from tests.helpers import new_uuid
from tests.helpers import success
from tests.helpers import wrapped
from tests.support import SWEEP_EVERY_SECOND
from tests.support import Service
from workers.queues import PERSIST_QUEUE


class Workers:
    """A persist worker and the cron process running the drain sweep (every second here)."""

    def __init__(self, env: dict[str, str], tmp_path):
        schedule = tmp_path / "sweep_schedule.py"
        schedule.write_text(SWEEP_EVERY_SECOND)
        self.worker = Service.worker(PERSIST_QUEUE, env)
        self.cron = Service.cron(schedule, env)

    def start(self) -> Workers:
        self.worker.start()
        self.cron.start()
        self.pids = (self.worker.pid, self.cron.pid)
        return self

    def still_the_same(self) -> bool:
        return self.worker.running() and self.cron.running() and (self.worker.pid, self.cron.pid) == self.pids

    def stop(self) -> None:
        self.worker.stop()
        self.cron.stop()


class Sender:
    """Runware's side of the wire: posts one result per task, again until it gets a 2xx.

    `acked` maps each task to the delivery id of its 2xx; `refused` counts the
    other answers (503s, connection errors) that made the sender retry.
    """

    def __init__(self, url: str, threads: int = 4):
        self.url = f"{url}{WEBHOOK}"
        self.threads = threads
        self.acked: dict[str, str] = {}
        self.attempts: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool: list[threading.Thread] = []

    def send(self, session: requests.Session, task: str) -> None:
        body = wrapped(success(task, text=f"caption of {task}"))
        while True:
            self.attempts[task] = self.attempts.get(task, 0) + 1
            try:
                response = session.post(self.url, params={"token": "hook-new"}, data=body,
                                        headers={"Content-Type": "application/json"}, timeout=10)
                outcome = response.status_code
            except requests.RequestException as exc:
                response, outcome = None, type(exc).__name__
            if response is not None and response.ok:
                with self._lock:
                    self.acked[task] = response.json()["delivery"]
                return
            with self._lock:
                self.refused[str(outcome)] = self.refused.get(str(outcome), 0) + 1
            time.sleep(0.2)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                self.send(session, new_uuid())

    def start(self) -> Sender:
        self._pool = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for thread in self._pool:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._pool:
            thread.join(timeout=60)


def ledger(engine) -> tuple[dict[str, dict], dict[str, int]]:
    """Stored tasks by uuid, and how many logged deliveries name each task."""
    with engine.connect() as conn:
        stored = {row["task_uuid"]: dict(row) for row in conn.execute(sa.select(tasks)).mappings()}
        logged: dict[str, int] = {}
        for items in conn.scalars(sa.select(deliveries.c["items"])):
            for item in items:
                logged[item["task_uuid"]] = logged.get(item["task_uuid"], 0) + 1
    return stored, logged


def assert_exactly_once(engine, acked: dict[str, str], retries: dict[str, int] | None = None) -> None:
    """Every acknowledged delivery is in the log; each task is stored as a success, counted once per delivery."""
    stored, logged = ledger(engine)
    with engine.connect() as conn:
        log_ids = set(conn.scalars(sa.select(deliveries.c.id)))
        assert conn.scalar(sa.select(sa.func.count()).select_from(dead_letters)) == 0
    lost = set(acked.values()) - log_ids
    assert not lost, f"{len(lost)} acknowledged deliveries never reached the store"
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged tasks not stored"
    for task in acked:
        row = stored[task]
        assert row["status"] == "success" and row["text"] == f"caption of {task}"
        assert row["delivery_count"] == logged[task], "a delivery counted twice, or not at all"
        # More than one delivery only when the sender retried after a failed answer.
        assert logged[task] <= (retries or {}).get(task, 1)
