"""Reconciliation: overdue tasks are polled with getResponse, late ones time out, nothing stays submitted."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from rq import Queue
from rq.cron import CronScheduler
from rq.job import Job
from rq.registry import FinishedJobRegistry

from store import submissions
from store.results import Result
from store.results import apply_results
from store.schema import utcnow
from tests.submitting import emulator  # noqa: F401  (fixture)
from tests.submitting import queue
from tests.submitting import rows
from tests.submitting import use_runware  # noqa: F401  (fixture)
from tests.support import Service
from tests.support import run_worker
from tests.support import wait_for
from workers.queues import MAINTENANCE_QUEUE
from workers.queues import SUBMIT_QUEUE
from workers.reconcile import NEXT_SLICE_FLAG
from workers.reconcile import POLL_BACKOFF_BASE_S
from workers.reconcile import POLL_LEASE_S
from workers.reconcile import reconcile
from workers.runware import RetryableError
from workers.submit import SUBMIT_FLAG
from workers.submit import submit_queued

LATER = timedelta(seconds=61)
"""Past the default RECONCILE_AFTER_SECONDS (60): the tasks are due a poll."""


def sent_unknown(engine, n: int, ago: timedelta) -> list[str]:
    """`n` tasks recorded as sent `ago`, which Runware never heard of (getResponse answers taskNotFound)."""
    uuids = queue(engine, n)
    sent_at = utcnow() - ago
    with engine.begin() as conn:
        apply_results(conn, [Result(u, "submitted", sent_at) for u in uuids], delivered=False)
        submissions.mark_submitted(conn, uuids, sent_at + LATER, now=sent_at)
    return uuids


def submitted(engine, n: int, **queue_options) -> list[str]:
    uuids = queue(engine, n, **queue_options)
    submit_queued()
    assert {r.status for r in rows(engine, uuids).values()} == {"submitted"}
    return uuids


def test_results_whose_webhook_was_dropped_are_recovered(engine, emulator, use_runware):  # noqa: F811
    use_runware(emulator(drop_rate=1.0))
    uuids = submitted(engine, 3)
    assert reconcile()["polled"] == 0, "not overdue yet"
    time.sleep(0.2)  # the emulator's processing time
    counts = reconcile(utcnow() + LATER)
    assert (counts["polled"], counts["found"], counts["timed_out"]) == (3, 3, 0)
    for row in rows(engine, uuids).values():
        assert row.status == "success" and row.text and row.cost == Decimal("0.0019")
        assert row.delivery_count == 0 and row.poll_attempts == 1 and row.input_ref is None


def test_a_task_still_processing_is_polled_again_after_a_backoff(engine, emulator, use_runware):  # noqa: F811
    use_runware(emulator(drop_rate=1.0, processing_ms=60_000))
    [task] = submitted(engine, 1)
    now = utcnow() + LATER
    assert reconcile(now)["found"] == 0
    row = rows(engine)[task]
    assert row.status == "submitted" and row.poll_attempts == 1
    assert POLL_BACKOFF_BASE_S / 2 <= (row.next_poll_at - now).total_seconds() <= POLL_BACKOFF_BASE_S
    assert reconcile(now)["polled"] == 0, "not due again yet"
    reconcile(now + timedelta(seconds=POLL_BACKOFF_BASE_S))
    row = rows(engine)[task]
    assert row.poll_attempts == 2
    assert POLL_BACKOFF_BASE_S <= (row.next_poll_at - now).total_seconds() <= 3 * POLL_BACKOFF_BASE_S


def test_a_task_error_found_by_polling_is_stored(engine, emulator, use_runware):  # noqa: F811
    use_runware(emulator(drop_rate=1.0, task_error_rate=1.0))
    [task] = submitted(engine, 1)
    time.sleep(0.2)
    reconcile(utcnow() + LATER)
    row = rows(engine)[task]
    assert (row.status, row.error_code, row.input_ref) == ("error", "timeoutProvider", None)


def test_a_task_without_a_result_at_the_deadline_fails_with_timeout(engine, emulator, use_runware):  # noqa: F811
    config = use_runware(emulator(), RESULT_DEADLINE_SECONDS=600)
    [task] = queue(engine, 1)  # Runware never heard of it: getResponse answers taskNotFound
    sent_at = utcnow()
    with engine.begin() as conn:
        apply_results(conn, [Result(task, "submitted", sent_at)], delivered=False)
        submissions.mark_submitted(conn, [task], sent_at + LATER, now=sent_at)
    counts = reconcile(sent_at + timedelta(seconds=300))
    assert counts["polled"] == 1 and rows(engine)[task].status == "submitted"
    counts = reconcile(sent_at + timedelta(seconds=config.result_deadline_seconds))
    assert counts["timed_out"] == 1
    row = rows(engine)[task]
    assert (row.status, row.error_code, row.input_ref) == ("error", "timeout", None)
    assert row.error_message == "no result within 600s of submission"
    with engine.begin() as conn:  # the result turns up after all: success outranks the timeout
        apply_results(conn, [Result(task, "success", utcnow(), text="late", cost=Decimal("0.002"))])
    assert rows(engine)[task].status == "success"


def test_a_result_found_at_the_deadline_is_kept_not_timed_out(engine, emulator, use_runware):  # noqa: F811
    config = use_runware(emulator(drop_rate=1.0))
    [task] = submitted(engine, 1)
    time.sleep(0.2)
    counts = reconcile(utcnow() + timedelta(seconds=config.result_deadline_seconds + 1))
    assert counts["timed_out"] == 0 and rows(engine)[task].status == "success"


def test_a_refused_poll_is_raised_for_rq_and_the_tasks_wait_their_turn(engine, emulator, use_runware):  # noqa: F811
    use_runware(emulator(drop_rate=1.0))
    uuids = submitted(engine, 2)
    use_runware(emulator(unavailable_rate=1.0))
    now = utcnow() + LATER
    with pytest.raises(RetryableError):
        reconcile(now)
    for row in rows(engine, uuids).values():
        assert row.status == "submitted" and row.poll_attempts == 1 and row.next_poll_at > now


def test_the_next_poll_is_never_later_than_the_deadline(engine, emulator, use_runware):  # noqa: F811
    use_runware(emulator(), RESULT_DEADLINE_SECONDS=300)
    [task] = sent_unknown(engine, 1, ago=timedelta(seconds=299))
    assert reconcile()["polled"] == 1
    row = rows(engine)[task]
    assert row.status == "submitted" and row.next_poll_at == row.submitted_at + timedelta(seconds=300)
    assert reconcile(row.next_poll_at)["timed_out"] == 1, "polled once more at the deadline, then failed"
    assert rows(engine)[task].error_code == "timeout"


def test_a_backlog_is_polled_in_slices_each_enqueuing_the_next(engine, redis_url, emulator, use_runware,  # noqa: F811
                                                               monkeypatch):
    use_runware(emulator())
    uuids = sent_unknown(engine, 120, ago=timedelta(minutes=2))
    # Set in this process, so also in the work horses the burst worker below forks from it.
    monkeypatch.setattr("workers.reconcile.SLICE_POLLS", 50)
    monkeypatch.setattr("workers.reconcile.POLL_BACKOFF_BASE_S", 120.0)  # polled tasks are not due again here
    conn = redis.Redis.from_url(redis_url)
    maintenance = Queue(MAINTENANCE_QUEUE, connection=conn)

    first = reconcile()
    assert (first["polled"], first["more_due"]) == (50, True)
    assert maintenance.count == 1 and conn.exists(NEXT_SLICE_FLAG)
    second = reconcile()  # the schedule's next run, while the next slice waits
    assert (second["polled"], second["more_due"]) == (50, True)
    assert maintenance.count == 1, "one next slice is queued at a time"

    run_worker(redis_url, MAINTENANCE_QUEUE)

    [job] = Job.fetch_many(FinishedJobRegistry(MAINTENANCE_QUEUE, connection=conn).get_job_ids(), connection=conn)
    assert job.kwargs == {"next_slice": True}
    assert (job.return_value()["polled"], job.return_value()["more_due"]) == (20, False), "the chain ends"
    assert maintenance.count == 0 and not conn.exists(NEXT_SLICE_FLAG)
    assert {row.poll_attempts for row in rows(engine, uuids).values()} == {1}, "each task polled once"


def test_a_task_another_slice_is_polling_is_left_to_it(engine, emulator, use_runware):  # noqa: F811
    config = use_runware(emulator())
    uuids = sent_unknown(engine, 3, ago=timedelta(seconds=config.result_deadline_seconds + 60))
    with engine.begin() as conn:  # a slice running elsewhere claims one and has not settled it yet
        [(held, _, _)] = submissions.claim_polls(conn, 1, config.reconcile_after_seconds, POLL_LEASE_S)

    counts = reconcile()

    assert (counts["polled"], counts["timed_out"]) == (2, 2)
    states = {uuid: (row.status, row.poll_attempts) for uuid, row in rows(engine, uuids).items()}
    assert states == {uuid: ("submitted", 1) if uuid == held else ("error", 1) for uuid in uuids}


def test_queued_tasks_with_no_job_on_the_way_get_one(engine, redis_url, emulator, use_runware):  # noqa: F811
    use_runware(emulator())
    queue(engine, 2)
    conn = redis.Redis.from_url(redis_url)
    assert reconcile()["submit_enqueued"] is True
    assert conn.exists(SUBMIT_FLAG) and Queue(SUBMIT_QUEUE, connection=conn).count == 1
    assert reconcile()["submit_enqueued"] is False, "one is on the way"


def test_images_of_tasks_finished_by_webhook_are_dropped(engine, emulator, use_runware):  # noqa: F811
    use_runware(emulator(drop_rate=1.0))
    [task] = submitted(engine, 1)
    assert rows(engine)[task].input_ref
    with engine.begin() as conn:
        apply_results(conn, [Result(task, "success", utcnow(), text="a cat", cost=Decimal("0.0019"))])
    assert reconcile()["inputs_cleared"] == 1 and rows(engine)[task].input_ref is None


def test_the_schedule_enqueues_reconcile_on_the_maintenance_queue(engine, redis_url, emulator, use_runware):  # noqa: F811
    use_runware(emulator(drop_rate=1.0), RECONCILE_INTERVAL_SECONDS=7)
    conn = redis.Redis.from_url(redis_url)
    scheduler = CronScheduler(connection=conn)
    scheduler.load_config_from_file("workers.schedule")
    jobs = {job.func_name: job for job in scheduler.get_jobs()}
    assert jobs["workers.reconcile.reconcile"].queue_name == MAINTENANCE_QUEUE
    assert jobs["workers.reconcile.reconcile"].interval == 7
    scheduler.enqueue_jobs()
    [job] = Queue(MAINTENANCE_QUEUE, connection=conn).jobs
    assert job.func_name == "workers.reconcile.reconcile"
    run_worker(redis_url, MAINTENANCE_QUEUE)
    job.refresh()
    assert job.is_finished and job.return_value()["polled"] == 0


def test_the_cron_process_runs_the_schedule_module(redis_url, config):
    cron = Service.cron("workers.schedule", {"RECONCILE_INTERVAL_SECONDS": "1"}).start()
    try:
        conn = redis.Redis.from_url(redis_url)
        wait_for(lambda: Queue(MAINTENANCE_QUEUE, connection=conn).count >= 1, timeout=20,
                 what="python -m workers cron to enqueue")
    finally:
        cron.stop()
    assert Queue(MAINTENANCE_QUEUE, connection=conn).jobs[0].func_name == "workers.reconcile.reconcile"
