"""Background work never starves foreground work: a large overdue backlog is reconciled in bounded slices on the
maintenance worker, while a new image submitted meanwhile is sent at once by the submit worker; the slices' progress
is in the store, so it survives a killed worker."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import orjson
import pytest
import redis
import requests
import sqlalchemy as sa
from rq.job import Job
from rq.registry import FinishedJobRegistry
from rq.registry import StartedJobRegistry

from store.schema import tasks
from store.schema import utcnow
from tests.submitting import data_uri
from tests.submitting import emulator  # noqa: F401  (fixture)
from tests.submitting import use_runware  # noqa: F401  (fixture)
from tests.support import Service
from tests.support import wait_for
from workers.queues import MAINTENANCE_QUEUE
from workers.reconcile import POLL_BATCH
from workers.reconcile import POLL_LEASE_S
from workers.reconcile import POLL_TIMEOUT_S
from workers.reconcile import SLICE_POLLS
from workers.reconcile import SLICE_S

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # seeding takes long on a loaded machine

BACKLOG = 10 * SLICE_POLLS
"""Overdue submitted tasks in the store, as after a long outage of the webhooks: ten slices' worth, so that
the slices watched (and the one running when the workers stop) never exhaust it."""

SENT_WITHIN_S = 5.0
"""How soon the submit worker must send a new image, whatever the backlog (the issue: "within a few seconds")."""

SLICES_SEEN = 3
"""Reconcile slices to watch finish before the workers are stopped."""


def seed_backlog(engine: sa.Engine, n: int) -> None:
    """Store `n` tasks sent two hours ago and never answered (test set-up, not the write path).

    Their taskUUIDs go into a temporary table, then into the tasks in one INSERT … SELECT:
    one row of values bound per task, not thirteen.
    """
    sent_at = utcnow() - timedelta(hours=2)
    staging = sa.Table("backlog", sa.MetaData(), sa.Column("task_uuid", sa.String(36)), prefixes=["TEMPORARY"])
    values = {"status": "submitted", "source": "submitted", "task_type": "imageCaption", "include_cost": True,
              "delivery_method": "async", "submitted_at": sent_at, "submit_attempts": 1,
              "next_poll_at": sent_at + timedelta(minutes=1), "created_at": sent_at, "updated_at": sent_at}
    rows = sa.select(staging.c.task_uuid, *[sa.literal(v, tasks.c[k].type) for k, v in values.items()])
    with engine.begin() as conn:
        staging.create(conn)
        conn.execute(staging.insert(), [{"task_uuid": str(uuid.uuid4())} for _ in range(n)])
        conn.execute(tasks.insert().from_select(["task_uuid", *values], rows))
        staging.drop(conn)
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE tasks"))  # as autovacuum does after a large write: the planner sees the rows


def still_submitted(engine: sa.Engine) -> int:
    """Tasks of the backlog not reconciled yet."""
    sent_before = utcnow() - timedelta(hours=1)
    with engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(tasks)
                           .where(tasks.c.status == "submitted", tasks.c.submitted_at < sent_before))


def finished_slices(conn: redis.Redis) -> list[Job]:
    """The reconcile jobs the maintenance worker finished, first started first."""
    ids = FinishedJobRegistry(MAINTENANCE_QUEUE, connection=conn).get_job_ids()
    jobs = [job for job in Job.fetch_many(ids, connection=conn)
            if job is not None and job.func_name == "workers.reconcile.reconcile"]
    return sorted(jobs, key=lambda job: job.started_at)


def test_a_new_image_is_sent_at_once_while_a_large_backlog_is_reconciled_in_slices(
        client, config, engine, emulator, use_runware):  # noqa: F811
    api_url = emulator(drop_rate=1.0)
    use_runware(api_url)
    seed_backlog(engine, BACKLOG)
    conn = redis.Redis.from_url(config.redis_url)
    processes = [Service.worker("maintenance", {}), Service.worker("submit", {}), Service.cron("workers.schedule", {})]
    for process in processes:
        process.start()
    try:
        wait_for(lambda: still_submitted(engine) < BACKLOG, timeout=60, interval=0.5, what="reconciliation to start")
        response = client.post("/api/captions", data=orjson.dumps({"images": [data_uri()]}),
                               content_type="application/json", headers={"Authorization": "Bearer submit-token"})
        assert response.status_code == 202, response.json
        [task] = [t["taskUUID"] for t in response.json["tasks"]]
        submitted_at = time.monotonic()
        emulator_tasks = api_url.removesuffix("/v1") + "/_emulator/tasks"
        wait_for(lambda: requests.get(emulator_tasks, params={"taskUUID": task}, timeout=5).json()["tasks"],
                 timeout=SENT_WITHIN_S, what="the new image to reach Runware")
        sent_after = time.monotonic() - submitted_at
        backlog_then = still_submitted(engine)
        wait_for(lambda: len(finished_slices(conn)) >= SLICES_SEEN, timeout=90, interval=0.5,
                 what="reconcile slices to finish")
    finally:
        for process in reversed(processes):
            process.stop()  # a worker finishes the slice it runs, then stops
    assert 0 < backlog_then, f"the backlog was reconciled already when the image was sent ({sent_after:.1f}s)"

    slices = finished_slices(conn)
    assert len(slices) >= SLICES_SEEN
    left = still_submitted(engine)
    for n, job in enumerate(slices):
        counts = job.return_value()
        # A slice stopped at its bound enqueues the next one; when the backlog ran out at that bound, that next
        # slice, the last, finds nothing to poll.
        ran_out = n == len(slices) - 1 and left == 0 and not counts["more_due"]
        assert (0 if ran_out else 1) <= counts["polled"] <= SLICE_POLLS, "\n".join(  # pytest shortens a list
            f"{j.id} {j.kwargs} {j.started_at:%H:%M:%S.%f}-{j.ended_at:%H:%M:%S.%f} {j.return_value()}" for j in slices)
        assert (job.ended_at - job.started_at).total_seconds() <= SLICE_S + POLL_TIMEOUT_S
        assert counts["timed_out"] == counts["polled"], "every task of the backlog was past its deadline"
    # Every task a slice polled was failed once, by that slice alone: the backlog shrank by their sum.
    assert BACKLOG - left == sum(job.return_value()["timed_out"] for job in slices)


def test_reconciliation_goes_on_after_its_worker_is_killed_mid_slice(
        config, engine, emulator, use_runware):  # noqa: F811
    use_runware(emulator(drop_rate=1.0))
    backlog = 5 * SLICE_POLLS
    seed_backlog(engine, backlog)
    conn = redis.Redis.from_url(config.redis_url)
    running = StartedJobRegistry(MAINTENANCE_QUEUE, connection=conn)
    worker = Service.worker("maintenance", {})
    cron = Service.cron("workers.schedule", {"RECONCILE_INTERVAL_SECONDS": "1"})
    worker.start()
    cron.start()
    try:
        wait_for(lambda: running.count and still_submitted(engine) < backlog - POLL_BATCH, timeout=60,
                 interval=0.1, what="a slice under way")
        worker.kill()  # kill -9 of the worker and the slice it runs, with a batch claimed and not settled
        left_by_the_kill = still_submitted(engine)
        worker.start()
        wait_for(lambda: still_submitted(engine) <= POLL_BATCH, timeout=120, interval=0.5,
                 what="the rest of the backlog to be reconciled")
    finally:
        cron.stop()
        worker.stop()
    assert 0 < left_by_the_kill < backlog
    # What is left is at most the batch the killed slice had claimed: leased to it, polled again once the lease ends.
    with engine.connect() as db:
        left = db.execute(sa.select(tasks.c.poll_attempts, tasks.c.next_poll_at)
                          .where(tasks.c.status == "submitted")).all()
    now = utcnow()
    assert all(attempts == 1 and now < next_poll <= now + timedelta(seconds=POLL_LEASE_S)
               for attempts, next_poll in left), left
