"""The reconcile job: recovers results that never came by webhook, and ends tasks that never finish.

Run on a schedule (`workers/schedule.py`, every `RECONCILE_INTERVAL_SECONDS`):

1. Poll: tasks submitted more than `RECONCILE_AFTER_SECONDS` ago and still
   without a result are asked for with `getResponse`, `POLL_BATCH` per request,
   each at most once per backoff step (`poll_attempts` and `next_poll_at`,
   exponential with jitter from `workers.runware.backoff`). A success or a
   task error found is stored through `store.results.apply_results`, like a
   webhook; `processing`, or an error about the poll itself (an item without
   `status: "error"`, such as an unknown task), leaves the task for a later poll.
2. Deadline: a task still submitted `RESULT_DEADLINE_SECONDS` after it was sent
   is polled once more and, if still without a result, fails with code
   `timeout`. A result that arrives later still wins (success outranks error).
3. Housekeeping: the stored image of every task finished in the last day
   (`INPUT_SWEEP_WINDOW`; webhooks finish tasks without this job) is dropped,
   and a submit job is enqueued if queued tasks wait with none on the way.

A transient Runware failure is raised after the tasks' next polls are
scheduled, so RQ records the failed run; the next scheduled run tries again.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta

import sqlalchemy as sa

from config import Config
from store import submissions
from store.db import engine_for
from store.results import Result
from store.results import apply_results
from store.schema import FINAL_STATUSES
from store.schema import utcnow
from workers import payloads
from workers.queues import connect
from workers.runware import RunwareClient
from workers.runware import RunwareError
from workers.runware import backoff
from workers.runware import poll_task
from workers.submit import want_submit

log = logging.getLogger(__name__)

RECONCILE_JOB_TIMEOUT = 600
"""Seconds RQ lets one reconcile run take."""

POLL_BATCH = 50
"""getResponse tasks per Runware request."""

POLL_LEASE_S = 300
"""Seconds a task being polled is reserved for the run polling it."""

POLL_BACKOFF_BASE_S = 5.0
POLL_BACKOFF_CAP_S = 300.0
"""Delay between two polls of a task: about 5, 10, 20, … s, at most 5 minutes, with jitter."""

MAX_POLLS_PER_RUN = 5000
"""Tasks one run polls at most (the next run goes on)."""

INPUT_SWEEP_WINDOW = timedelta(days=1)
"""Finished tasks updated this recently have their stored image dropped (a task finished
while reconciliation was stopped for longer keeps it)."""


@dataclass
class Counts:
    polled: int = 0
    found: int = 0
    timed_out: int = 0
    inputs_cleared: int = 0
    submit_enqueued: bool = False


def findings(batch: list[str], items: list[tuple[dict, bool]], received_at: datetime) -> dict[str, Result]:
    """The final results a getResponse answer holds for tasks of `batch` (success, or the task's own error)."""
    members, found = set(batch), {}
    for item, is_error in items:
        try:
            uuid = payloads.task_uuid(item)
        except payloads.InvalidItem:
            continue
        if uuid not in members:
            continue
        outcome = not is_error or item.get("status") == "error" or isinstance(item.get("error"), dict)
        if not outcome:
            continue  # an error about the poll (unknown task, bad request): ask again later
        try:
            result = payloads.to_result(item, is_error, received_at)
        except payloads.InvalidItem as exc:
            log.warning("task %s: unusable getResponse item (%s)", uuid, exc)
            continue
        if result.status in FINAL_STATUSES and (uuid not in found or result.status == "success"):
            found[uuid] = result
    return found


class Reconciler:
    def __init__(self, engine: sa.Engine, client: RunwareClient, config: Config):
        self.engine = engine
        self.client = client
        self.config = config
        self.counts = Counts()

    def poll(self, batch: list[str]) -> tuple[dict[str, Result], RunwareError | None]:
        """Ask Runware for the tasks of `batch`; the final results found, and the error if the request failed."""
        try:
            answer, error = self.client.run([poll_task(u) for u in batch]), None
        except RunwareError as exc:
            answer, error = exc.answer, exc
        self.counts.polled += len(batch)
        return findings(batch, answer.items(), utcnow()), error

    def store(self, results: dict[str, Result]) -> None:
        with self.engine.begin() as conn:
            apply_results(conn, results.values(), delivered=False)
            submissions.clear_inputs(conn, results)

    def poll_due(self, now: datetime) -> RunwareError | None:
        """Step 1. Returns the error that stopped it, if Runware refused a whole request."""
        last_error = None
        while self.counts.polled < MAX_POLLS_PER_RUN:
            with self.engine.begin() as conn:
                claimed = submissions.claim_polls(conn, POLL_BATCH, self.config.reconcile_after_seconds,
                                                  POLL_LEASE_S, now=now)
            if not claimed:
                break
            found, error = self.poll([uuid for uuid, _ in claimed])
            self.store(found)
            self.counts.found += len(found)
            when = {uuid: now + timedelta(seconds=backoff(n - 1, POLL_BACKOFF_BASE_S, POLL_BACKOFF_CAP_S))
                    for uuid, n in claimed if uuid not in found}
            with self.engine.begin() as conn:
                submissions.schedule_polls(conn, when)
            if error is not None:
                log.warning("getResponse for %d tasks: Runware answered %s %s", len(claimed),
                            error.status or "-", error.code)
                if error.retryable or error.request_wide:
                    last_error = error
                    break  # Runware is refusing: leave the rest to the next run
        return last_error

    def expire(self, now: datetime) -> None:
        """Step 2: one last poll, then fail what is still without a result."""
        deadline = self.config.result_deadline_seconds
        while True:
            with self.engine.connect() as conn:
                late = submissions.overdue(conn, deadline, now=now, limit=POLL_BATCH)
            if not late:
                return
            found, _ = self.poll(late)
            received_at = utcnow()
            timeouts = {uuid: Result(uuid, "error", received_at, error_code="timeout",
                                     error_message=f"no result within {deadline}s of submission")
                        for uuid in late if uuid not in found}
            self.store({**found, **timeouts})
            self.counts.found += len(found)
            self.counts.timed_out += len(timeouts)
            if timeouts:
                log.warning("%d tasks failed with timeout (no result %ds after submission)", len(timeouts), deadline)

    def run(self, now: datetime | None = None) -> RunwareError | None:
        now = now or utcnow()
        error = self.poll_due(now)
        self.expire(now)
        with self.engine.begin() as conn:
            self.counts.inputs_cleared = submissions.clear_inputs(conn, since=now - INPUT_SWEEP_WINDOW)
        return error


def reconcile(now: datetime | None = None) -> dict:
    """RQ job (scheduled): poll overdue tasks, fail those past the deadline, keep submission going."""
    config = Config.from_env()
    engine = engine_for(config.database_url)
    reconciler = Reconciler(engine, RunwareClient.from_config(config), config)
    error = reconciler.run(now)
    with engine.connect() as conn:
        waiting = submissions.has_due_queued(conn, now)
    if waiting:
        reconciler.counts.submit_enqueued = want_submit(connect(config.redis_url))
    counts = asdict(reconciler.counts)
    log.info("reconcile: %s", counts)
    if error is not None:
        raise error  # RQ records the failed run; the next scheduled one tries again
    return counts
