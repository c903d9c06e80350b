"""The reconcile job: recovers results that never came by webhook, and ends tasks that never finish.

It runs on the maintenance queue (its own worker, `python -m workers maintenance`),
so however large the backlog, it never holds up the submit or persist workers.
Each job is one bounded slice: at most `SLICE_POLLS` polls and `SLICE_S`
seconds of claiming. A slice that stops with tasks still due enqueues the
next slice at once (one queued at a time: `NEXT_SLICE_FLAG`); the schedule
(`workers/schedule.py`, every `RECONCILE_INTERVAL_SECONDS`) starts one too.
Progress is in the store, not in the job: a slice killed midway loses at most
its claimed batch, which its lease (`POLL_LEASE_S`) hands to a later slice.

1. Poll: tasks submitted more than `RECONCILE_AFTER_SECONDS` ago and still
   without a result are claimed (`store.submissions.claim_polls`, a lease, so
   two slices never poll the same task) and asked for with `getResponse`,
   `POLL_BATCH` per request, each at most once per backoff step
   (`poll_attempts` and `next_poll_at`, exponential with jitter from
   `workers.runware.backoff`). A success or a task error found is stored
   through `store.results.apply_results`, like a webhook; `processing`, or an
   error about the poll itself (an item without `status: "error"`, such as an
   unknown task), leaves the task for a later poll.
2. Deadline: a task's next poll is never later than `RESULT_DEADLINE_SECONDS`
   after it was sent; polled then and still without a result, it fails with
   code `timeout`. A result that arrives later still wins (success outranks
   error).
3. Housekeeping: the stored image of every task finished in the last day
   (`INPUT_SWEEP_WINDOW`; webhooks finish tasks without this job) is dropped
   by the scheduled slice (not by the next slices: the sweep reads a day of
   changes), and a submit job is enqueued if queued tasks wait with none on
   the way.

A transient Runware failure is raised after the tasks' next polls are
scheduled, so RQ records the failed run; the next scheduled run tries again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta

import redis
import sqlalchemy as sa
from rq import Queue

from config import Config
from store import submissions
from store.db import write_engine
from store.results import Event
from store.results import Result
from store.results import apply_results
from store.results import record_events
from store.schema import FINAL_STATUSES
from store.schema import utcnow
from workers import payloads
from workers.connection import connect
from workers.queues import MAINTENANCE_QUEUE
from workers.runware import RunwareClient
from workers.runware import RunwareError
from workers.runware import backoff
from workers.runware import poll_task
from workers.submit import want_submit

log = logging.getLogger(__name__)

POLL_BATCH = 50
"""getResponse tasks per Runware request."""

POLL_TIMEOUT_S = 30.0
"""Seconds a getResponse request may take (Runware answers it at once; a caption request may take minutes)."""

SLICE_POLLS = 1000
"""Tasks one reconcile slice polls at most (the next slice goes on)."""

SLICE_S = 10.0
"""Seconds after which a slice claims no more tasks: it ends after the request in flight."""

RECONCILE_JOB_OPTIONS = {"job_timeout": 120, "result_ttl": 600, "failure_ttl": 7 * 86400}
"""RQ options of a reconcile slice, scheduled or enqueued by the slice before (the timeout: SLICE_S, a
request of POLL_TIMEOUT_S and the housekeeping, with room to spare)."""

NEXT_SLICE_FLAG = "captions:reconcile:next"
"""Set while a next slice is queued; the slice that sets it enqueues it, and that slice clears it when it starts."""

NEXT_SLICE_FLAG_TTL = 300
"""Seconds the flag outlives a next slice that never ran (a later slice enqueues another after that)."""

POLL_LEASE_S = 300
"""Seconds a task being polled is reserved for the slice polling it."""

POLL_BACKOFF_BASE_S = 5.0
POLL_BACKOFF_CAP_S = 300.0
"""Delay between two polls of a task: about 5, 10, 20, … s, at most 5 minutes, with jitter."""

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
    more_due: bool = False
    """The slice ended at its bound with tasks still due (a next slice goes on)."""


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
    """One slice of reconciliation: at most `max_polls` polls, claimed for at most `seconds`."""

    def __init__(self, engine: sa.Engine, client: RunwareClient, config: Config, max_polls: int, seconds: float):
        self.engine = engine
        self.client = client
        self.config = config
        self.max_polls = max_polls
        self.seconds = seconds
        self.counts = Counts()

    def poll(self, batch: list[str]) -> tuple[dict[str, Result], RunwareError | None]:
        """Ask Runware for the tasks of `batch`; the final results found, and the error if the request failed."""
        try:
            answer, error = self.client.run([poll_task(u) for u in batch]), None
        except RunwareError as exc:
            answer, error = exc.answer, exc
        self.counts.polled += len(batch)
        return findings(batch, answer.items(), utcnow()), error

    def settle(self, claimed: list[tuple[str, int, datetime]], found: dict[str, Result], now: datetime,
               error: RunwareError | None = None) -> None:
        """Store what was found, fail the tasks past the deadline, schedule the next poll of the others.

        Each polled task gets an event in its history (`error`: the poll's refusal, if any).
        """
        deadline = self.config.result_deadline_seconds
        received_at, timeouts, when = utcnow(), {}, {}
        for uuid, attempts, submitted_at in claimed:
            if uuid in found:
                continue
            last_poll = submitted_at + timedelta(seconds=deadline)
            if last_poll <= now:
                timeouts[uuid] = Result(uuid, "error", received_at, error_code="timeout",
                                        error_message=f"no result within {deadline}s of submission")
            else:
                delay = backoff(attempts - 1, POLL_BACKOFF_BASE_S, POLL_BACKOFF_CAP_S)
                when[uuid] = min(now + timedelta(seconds=delay), last_poll)
        results = {**found, **timeouts}
        waiting = f"Runware answered {error.status or '-'} {error.code}" if error else "no result yet"
        events = [Event.of(r, "poll") for r in results.values()]
        events += [Event(uuid, received_at, "poll", detail=f"{waiting}; next poll at {at.isoformat()}")
                   for uuid, at in when.items()]
        with self.engine.begin() as conn:
            apply_results(conn, results.values(), delivered=False)
            record_events(conn, events)
            submissions.clear_inputs(conn, results)
            submissions.schedule_polls(conn, when)
        self.counts.found += len(found)
        self.counts.timed_out += len(timeouts)
        if timeouts:
            log.warning("%d tasks failed with timeout (no result %ds after submission)", len(timeouts), deadline)

    def poll_due(self, now: datetime) -> RunwareError | None:
        """Steps 1 and 2, within the slice's bounds. Returns the error that stopped it, if Runware refused."""
        stop_at = time.monotonic() + self.seconds
        after = min(self.config.reconcile_after_seconds, self.config.result_deadline_seconds)
        while True:
            with self.engine.begin() as conn:
                claimed = submissions.claim_polls(conn, min(POLL_BATCH, self.max_polls - self.counts.polled),
                                                  after, POLL_LEASE_S, now=now)
            if not claimed:
                return None
            found, error = self.poll([uuid for uuid, _, _ in claimed])
            self.settle(claimed, found, now, error)
            if error is not None:
                log.warning("getResponse for %d tasks: Runware answered %s %s", len(claimed),
                            error.status or "-", error.code)
                if error.retryable or error.request_wide:
                    return error  # Runware is refusing: leave the rest to the next scheduled run
            if self.counts.polled >= self.max_polls or time.monotonic() >= stop_at:
                self.counts.more_due = True  # the first batch always runs, so every slice progresses
                return None

    def run(self, now: datetime, sweep_inputs: bool) -> RunwareError | None:
        """Steps 1 and 2, then step 3's image sweep if asked (it reads a day of changes: once per scheduled run)."""
        error = self.poll_due(now)
        if sweep_inputs:
            with self.engine.begin() as conn:
                self.counts.inputs_cleared = submissions.clear_inputs(conn, since=now - INPUT_SWEEP_WINDOW)
        return error


def enqueue_next_slice(conn: redis.Redis) -> None:
    """Enqueue the next slice, unless one is queued already."""
    if conn.set(NEXT_SLICE_FLAG, 1, nx=True, ex=NEXT_SLICE_FLAG_TTL):
        Queue(MAINTENANCE_QUEUE, connection=conn).enqueue(reconcile, kwargs={"next_slice": True},
                                                          **RECONCILE_JOB_OPTIONS)


def reconcile(now: datetime | None = None, next_slice: bool = False) -> dict:
    """RQ job: one slice (poll overdue tasks, fail those past the deadline, keep submission going)."""
    config = Config.from_env()
    conn = connect(config)
    if next_slice:
        conn.delete(NEXT_SLICE_FLAG)  # from now on, a slice that stops at its bound enqueues another
    engine = write_engine(config)
    client = RunwareClient(config.runware_api_url, config.runware_api_key, timeout=POLL_TIMEOUT_S)
    reconciler = Reconciler(engine, client, config, SLICE_POLLS, SLICE_S)
    now = now or utcnow()
    error = reconciler.run(now, sweep_inputs=not next_slice)
    with engine.connect() as db:
        waiting = submissions.has_due_queued(db, now)
    if waiting:
        reconciler.counts.submit_enqueued = want_submit(conn)
    if reconciler.counts.more_due:
        enqueue_next_slice(conn)
    counts = asdict(reconciler.counts)
    log.info("reconcile: %s", counts)
    if error is not None:
        raise error  # RQ records the failed run; the next scheduled one tries again
    return counts
