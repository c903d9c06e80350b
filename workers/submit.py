"""The submit job: sends queued caption tasks to Runware in batches and stores what it answers.

`submit_queued` claims due queued tasks `SUBMIT_BATCH_SIZE` at a time (see
`store.submissions` for why two workers never send the same task), sends each
batch as one Runware request, and settles every task of the batch through
`store.results.apply_results`, the merge path webhooks use too:

- a result item (`data`) matched by taskUUID: an ack (async) moves the task to
  submitted, a caption (sync) stores the result;
- an error item matched by taskUUID stores that task's error, with Runware's
  code and message (`conflictTaskUUID` means Runware has the task already: it
  counts as submitted);
- a task the answer does not name: submitted after a 2xx; failed with the
  request's code and message after a 400/401/402/403 that names no task; sent
  again after a transient failure, or after a refusal that named other tasks
  (so one bad image does not sink its batch).

Retries: one mechanism, RQ's. On a transient failure (429, 5xx, timeout,
network) the job hands the batch back (the tasks stay queued), stops, and
raises the `RetryableError`; it is enqueued with `Retry(max=JOB_RETRIES)` and
intervals from `workers.runware.backoff` (exponential with jitter), so RQ's
scheduler runs it again later and it claims whatever is queued then. A task
sent `SUBMIT_MAX_ATTEMPTS` times without being taken fails with the last error.
If RQ gives up, the reconcile job (every `RECONCILE_INTERVAL_SECONDS`) enqueues
a submit job again while due queued tasks remain.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta
from urllib.parse import quote
from urllib.parse import urlencode

import redis
import sqlalchemy as sa
from rq import Queue
from rq import Retry

from config import Config
from store import submissions
from store.db import write_engine
from store.results import Event
from store.results import Result
from store.results import apply_results
from store.results import record_events
from store.schema import utcnow
from workers import payloads
from workers.connection import connect
from workers.queues import SUBMIT_QUEUE
from workers.runware import CONFLICT_CODE
from workers.runware import DEFAULT_TIMEOUT
from workers.runware import RunwareAnswer
from workers.runware import RunwareClient
from workers.runware import RunwareError
from workers.runware import backoff
from workers.runware import caption_task

log = logging.getLogger(__name__)

SUBMIT_JOB = "workers.submit.submit_queued"
SUBMIT_FLAG = "captions:submit:wanted"
"""Set while a submit job is queued; whoever sets it enqueues one (the job clears it when it starts)."""

SUBMIT_FLAG_TTL = 60
"""Seconds the flag outlives a submit job that never ran (a new one is enqueued after that)."""

SUBMIT_JOB_TIMEOUT = 600
"""Seconds RQ lets one submit job run (it hands over well before, see HAND_OVER_AFTER_S)."""

HAND_OVER_AFTER_S = 60.0
"""A submit job that has run this long enqueues its successor and ends."""

CLAIM_LEASE_S = DEFAULT_TIMEOUT + 120
"""Seconds a claimed task is reserved for the job that sends it (longer than one request can take)."""

JOB_RETRIES = 6
RETRY_BASE_S = 2.0
RETRY_CAP_S = 120.0
"""RQ retries of a submit job after a transient failure: about 2, 4, 8, 16, 32, 64 s, with jitter."""


def webhook_url(config: Config, labels: dict[str, str] | None = None) -> str:
    """Where Runware sends results: the public URL, the first webhook token and the task's labels. Never log it."""
    query = urlencode({"token": config.webhook_tokens[0], **(labels or {})}, quote_via=quote, safe="")
    return f"{config.public_url}/webhooks/runware?{query}"


def retry_policy() -> Retry:
    """RQ's retries of a submit job, with jittered exponential intervals (RQ wants whole seconds)."""
    return Retry(max=JOB_RETRIES, interval=[math.ceil(backoff(n, RETRY_BASE_S, RETRY_CAP_S))
                                            for n in range(JOB_RETRIES)])


def enqueue_submit(conn: redis.Redis, batch_size: int | None = None) -> None:
    """Enqueue a submit job (normally through `want_submit`)."""
    Queue(SUBMIT_QUEUE, connection=conn).enqueue(
        SUBMIT_JOB, batch_size, job_timeout=SUBMIT_JOB_TIMEOUT, retry=retry_policy(),
        result_ttl=600, failure_ttl=7 * 86400,
    )


def want_submit(conn: redis.Redis) -> bool:
    """Make sure a submit job is queued; True when this call enqueued one. Call after storing tasks."""
    if conn.set(SUBMIT_FLAG, 1, nx=True, ex=SUBMIT_FLAG_TTL):
        enqueue_submit(conn)
        return True
    return False


@dataclass
class Settlement:
    """What one answer means for each task of its batch."""

    results: list[Result] = field(default_factory=list)
    """Results to merge: acks (submitted), sync captions (success), task errors."""

    taken: list[str] = field(default_factory=list)
    """Tasks Runware has: record the send time and schedule a poll."""

    again: list[str] = field(default_factory=list)
    """Tasks not taken, to be sent again."""


def settle(batch: list[str], answer: RunwareAnswer, error: RunwareError | None, received_at: datetime) -> Settlement:
    """Match an answer (or a refusal carrying one) to the taskUUIDs of its batch."""
    members, done, named_errors = set(batch), {}, False
    general: list[dict] = []

    for item, is_error in answer.items():
        try:
            uuid = payloads.task_uuid(item)
        except payloads.InvalidItem:
            uuid = None
        if uuid not in members:
            if is_error:
                general.append(item)
            continue
        if is_error and item.get("code") == CONFLICT_CODE:
            done.setdefault(uuid, Result(uuid, "submitted", received_at, task_type=item.get("taskType")))
            continue
        if is_error and error is not None and error.retryable and item.get("status") != "error":
            continue  # a transient refusal scoped to the task (not its outcome): send it again
        try:
            result = payloads.to_result(item, is_error, received_at)
        except payloads.InvalidItem as exc:
            log.warning("task %s: unusable answer item (%s)", uuid, exc)
            continue
        named_errors |= result.status == "error"
        previous = done.get(uuid)
        if previous is None or payloads.RANK[result.status] > payloads.RANK[previous.status]:
            done[uuid] = result

    out = Settlement(results=list(done.values()))
    out.taken = [r.task_uuid for r in out.results if r.status != "error"]
    missing = [uuid for uuid in batch if uuid not in done]
    if error is None and (answer.data or not general):
        out.results += [Result(uuid, "submitted", received_at) for uuid in missing]
        out.taken += missing
    elif error is not None and (error.retryable or named_errors):
        out.again = missing
    else:
        code, message = (error.code, error.message) if error else _general(general)
        out.results += [Result(uuid, "error", received_at, error_code=code, error_message=message) for uuid in missing]
    return out


def _general(items: list[dict]) -> tuple[str, str]:
    item = items[0] if items else {}
    return str(item.get("code") or "error"), str(item.get("message") or "")


@dataclass
class Counts:
    sent: int = 0
    requests: int = 0
    failed: int = 0
    retried: int = 0


class Submitter:
    """Claims queued tasks and sends them, one batch per request."""

    def __init__(self, engine: sa.Engine, client: RunwareClient, config: Config):
        self.engine = engine
        self.client = client
        self.config = config
        self.counts = Counts()

    def task(self, claimed: submissions.Claimed) -> dict:
        sync = claimed.delivery_method == "sync"
        return caption_task(claimed.task_uuid, claimed.input_ref, model=claimed.model,
                            include_cost=claimed.include_cost, delivery_method=claimed.delivery_method,
                            webhook_url=None if sync else webhook_url(self.config, claimed.labels))

    def run(self, batch_size: int, hand_over_after: float | None = None) -> bool:
        """Send batches until nothing is due. Returns False when it stopped early to hand over."""
        deadline = None if hand_over_after is None else time.monotonic() + hand_over_after
        while True:
            with self.engine.begin() as conn:
                claimed = submissions.with_labels(conn, submissions.claim_queued(conn, batch_size, CLAIM_LEASE_S))
            if not claimed:
                return True
            self.send(claimed)
            if deadline is not None and time.monotonic() > deadline:
                return False

    def send(self, claimed: list[submissions.Claimed]) -> None:
        """Send one batch and settle it; raises RetryableError after handing back a transient failure."""
        batch = [c.task_uuid for c in claimed]
        try:
            answer, error = self.client.run([self.task(c) for c in claimed]), None
        except RunwareError as exc:
            answer, error = exc.answer, exc
        except BaseException:
            self._hand_back(batch)
            raise
        self.counts.requests += 1
        received_at = utcnow()
        outcome = settle(batch, answer, error, received_at)
        attempts = {c.task_uuid: c.attempts for c in claimed}
        give_up = [u for u in outcome.again if attempts[u] >= self.config.submit_max_attempts]
        if give_up and error is not None:
            message = f"gave up after {self.config.submit_max_attempts} attempts: {error.message}"
            outcome.results += [Result(u, "error", received_at, error_code=error.code, error_message=message)
                                for u in give_up]
        again = [u for u in outcome.again if u not in give_up]
        poll_at = received_at + timedelta(seconds=self.config.reconcile_after_seconds)
        events = [Event.of(r, "submission") for r in outcome.results]
        if error is not None:
            refusal = f"to be sent again: Runware answered {error.status or '-'} {error.code}: {error.message}"
            events += [Event(u, received_at, "submission", detail=refusal.rstrip(": ")) for u in again]
        with self.engine.begin() as conn:
            apply_results(conn, outcome.results, delivered=False)
            record_events(conn, events)
            submissions.mark_submitted(conn, outcome.taken, poll_at, now=received_at)
            submissions.release(conn, again)
            submissions.clear_inputs(conn, batch)
        failed = sum(r.status == "error" for r in outcome.results)
        self.counts.sent += len(outcome.taken)
        self.counts.failed += failed
        self.counts.retried += len(again)
        if error is not None:
            log.warning("batch of %d: Runware answered %s %s; %d taken, %d failed, %d to send again",
                        len(batch), error.status or "-", error.code, len(outcome.taken), failed, len(again))
        if error is not None and error.retryable and again:
            raise error

    def _hand_back(self, batch: list[str]) -> None:
        try:
            with self.engine.begin() as conn:
                submissions.release(conn, batch)
        except Exception:  # the original error matters more; the claim lapses by itself
            log.exception("could not hand back %d claimed tasks", len(batch))


def submit_queued(batch_size: int | None = None, hand_over_after: float = HAND_OVER_AFTER_S) -> dict:
    """RQ job: send the queued tasks, `batch_size` (default SUBMIT_BATCH_SIZE) per Runware request."""
    config = Config.from_env()
    conn = connect(config)
    conn.delete(SUBMIT_FLAG)  # tasks stored from now on enqueue a new job
    submitter = Submitter(write_engine(config), RunwareClient.from_config(config), config)
    try:
        finished = submitter.run(batch_size or config.submit_batch_size, hand_over_after)
    finally:
        c = submitter.counts
        log.info("submit: %d requests, %d tasks taken, %d failed, %d to send again",
                 c.requests, c.sent, c.failed, c.retried)
    if not finished:
        want_submit(conn)
    return asdict(submitter.counts)
