"""The delivery log: what it keeps (never a token), for how long, and the cleanup job that enforces it."""

from __future__ import annotations

import json
from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
import redis
import sqlalchemy as sa
from rq import Queue
from rq.job import Job
from rq.registry import FinishedJobRegistry

from config import Config
from config import ConfigError
from store.schema import dead_letters
from store.schema import deliveries
from store.schema import utcnow
from tests.helpers import new_uuid
from tests.helpers import post
from tests.helpers import success
from tests.helpers import wrapped
from tests.support import run_worker
from workers import maintenance
from workers.queues import DELIVERY_STREAM
from workers.queues import MAINTENANCE_QUEUE
from workers.queues import PERSIST_QUEUE


def add_delivery(engine, received_at: datetime, n: int) -> str:
    delivery_id = f"{int(received_at.timestamp() * 1000)}-{n}"
    with engine.begin() as conn:
        conn.execute(deliveries.insert().values(
            id=delivery_id, received_at=received_at, remote_addr="10.0.0.1", size=10, outcome="stored",
            items=[], stored_at=received_at))
    return delivery_id


def add_letter(engine, created_at: datetime, replayed_at: datetime | None) -> int:
    with engine.begin() as conn:
        return conn.execute(dead_letters.insert().values(
            delivery_id=None, task_uuid=new_uuid(), item={}, reason="refused", created_at=created_at,
            replayed_at=replayed_at)).inserted_primary_key[0]


def ids(engine, table) -> set:
    with engine.connect() as conn:
        return set(conn.scalars(sa.select(table.c.id)))


def test_the_log_keeps_time_source_size_outcome_and_items_but_no_token(client, config, engine):
    task = new_uuid()
    body = wrapped(success(task, text="a cat", cost=0.002), {"taskUUID": "not-a-uuid"})
    before = utcnow()
    response = post(client, body, token="hook-new")
    run_worker(config.redis_url, PERSIST_QUEUE)

    with engine.connect() as conn:
        row = conn.execute(sa.select(deliveries)).mappings().one()
    assert row["id"] == response.json["delivery"]
    assert before <= row["received_at"] <= utcnow()
    assert row["remote_addr"] == "127.0.0.1"
    assert row["size"] == len(body)
    assert row["outcome"] == "partial" and "taskUUID" in row["detail"]
    assert row["items"] == [{"task_uuid": task, "status": "success", "text": "a cat", "cost": "0.002",
                             "task_type": "imageCaption"}]
    assert "hook-new" not in json.dumps({k: str(v) for k, v in row.items()})


def test_purge_deletes_old_log_rows_in_batches_and_keeps_the_rest(engine):
    now = utcnow()
    old = {add_delivery(engine, now - timedelta(days=40, minutes=i), i) for i in range(7)}
    recent = {add_delivery(engine, now - timedelta(days=2), 0)}

    deleted = maintenance.purge(engine, now - timedelta(days=30), batch_size=3)

    assert deleted == {"deliveries": 7, "task_events": 0, "dead_letters": 0, "thumbnails": 0, "finished": True}
    assert ids(engine, deliveries) == recent
    assert not old & ids(engine, deliveries)


def test_purge_keeps_pending_dead_letters_whatever_their_age(engine):
    now = utcnow()
    pending = add_letter(engine, now - timedelta(days=400), None)
    replayed_old = add_letter(engine, now - timedelta(days=60), now - timedelta(days=45))
    replayed_recent = add_letter(engine, now - timedelta(days=60), now - timedelta(days=1))

    deleted = maintenance.purge(engine, now - timedelta(days=30))

    assert deleted["dead_letters"] == 1
    assert ids(engine, dead_letters) == {pending, replayed_recent}
    assert replayed_old not in ids(engine, dead_letters)


def test_the_cutoff_spares_the_log_of_deliveries_still_in_the_stream(redis_url):
    conn = redis.Redis.from_url(redis_url)
    config = Config(delivery_retention_days=30)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert maintenance.retention_cutoff(config, conn, now) == now - timedelta(days=30)

    queued_at = now - timedelta(days=45)
    conn.xadd(DELIVERY_STREAM, {"body": b"{}"}, id=f"{int(queued_at.timestamp() * 1000)}-0")

    assert maintenance.retention_cutoff(config, conn, now) == queued_at - maintenance.CLOCK_MARGIN


def test_the_cleanup_job_runs_on_a_real_maintenance_worker(config, engine, monkeypatch):
    monkeypatch.setenv("DELIVERY_RETENTION_DAYS", "7")
    now = utcnow()
    add_delivery(engine, now - timedelta(days=8), 0)
    kept = add_delivery(engine, now - timedelta(days=6), 0)
    conn = redis.Redis.from_url(config.redis_url)
    job = Queue(MAINTENANCE_QUEUE, connection=conn).enqueue("workers.maintenance.cleanup")

    run_worker(config.redis_url, MAINTENANCE_QUEUE)

    job.refresh()
    assert job.is_finished, job.latest_result()
    assert job.return_value() == {"deliveries": 1, "task_events": 0, "dead_letters": 0, "thumbnails": 0,
                                  "finished": True}
    assert ids(engine, deliveries) == {kept}


def test_a_long_cleanup_goes_on_in_slices_each_enqueuing_the_next(config, engine, monkeypatch):
    """A slice deletes a batch, finds its time spent and enqueues the next, until nothing old is left."""
    monkeypatch.setattr(maintenance, "CLEANUP_BATCH", 2)
    monkeypatch.setattr(maintenance, "CLEANUP_SLICE_S", 0.0)  # every slice stops after its first batch
    now = utcnow()
    for i in range(5):
        add_delivery(engine, now - timedelta(days=40, minutes=i), i)
    letters = {add_letter(engine, now - timedelta(days=60), now - timedelta(days=45)) for _ in range(2)}
    kept = {add_delivery(engine, now - timedelta(days=2), 0)}
    conn = redis.Redis.from_url(config.redis_url)
    Queue(MAINTENANCE_QUEUE, connection=conn).enqueue("workers.maintenance.cleanup")

    run_worker(config.redis_url, MAINTENANCE_QUEUE)  # forks from this process: the settings above hold

    registry = FinishedJobRegistry(MAINTENANCE_QUEUE, connection=conn)
    slices = sorted(Job.fetch_many(registry.get_job_ids(), connection=conn), key=lambda job: job.started_at)
    assert [job.return_value() for job in slices] == [
        {"deliveries": 2, "task_events": 0, "dead_letters": 0, "thumbnails": 0, "finished": False},
        {"deliveries": 2, "task_events": 0, "dead_letters": 0, "thumbnails": 0, "finished": False},
        {"deliveries": 1, "task_events": 0, "dead_letters": 2, "thumbnails": 0, "finished": False},
        {"deliveries": 0, "task_events": 0, "dead_letters": 0, "thumbnails": 0, "finished": True},
    ]
    assert ids(engine, deliveries) == kept and not letters & ids(engine, dead_letters)


@pytest.mark.parametrize("env", [{"DELIVERY_RETENTION_DAYS": "0"}, {"DELIVERY_RETENTION_DAYS": "a month"},
                                 {"PERSIST_STALE_AFTER_MS": "10"}])
def test_retention_and_stale_settings_are_checked(env):
    with pytest.raises(ConfigError):
        Config.from_env({"APP_ENV": "development", "WEBHOOK_TOKENS": "w", "READ_TOKENS": "r",
                         "SUBMIT_TOKENS": "s", **env})
