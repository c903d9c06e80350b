"""The drain job: batches, idempotent replays, and items the database rejects."""

from __future__ import annotations

import pytest
import redis
import sqlalchemy as sa
from rq.job import Job

from store.schema import dead_letters
from store.schema import deliveries
from store.schema import tasks
from tests.helpers import new_uuid
from tests.helpers import post
from tests.helpers import success
from tests.helpers import wrapped
from tests.support import run_worker
from workers.persist import Drainer
from workers.persist import ensure_group
from workers.persist import to_delivery
from workers.persist import write
from workers.queues import DELIVERY_STREAM
from workers.queues import DRAIN_FLAG
from workers.queues import PERSIST_QUEUE
from workers.queues import drain_flag

POISON_TRIGGERS = {
    "sqlite": [
        """CREATE TRIGGER poison BEFORE INSERT ON tasks WHEN NEW.text = 'poison'
           BEGIN SELECT RAISE(ABORT, 'poison caption refused'); END""",
    ],
    "postgresql": [
        """CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN
             IF NEW.text = 'poison' THEN RAISE EXCEPTION 'poison caption refused' USING ERRCODE = '22000'; END IF;
             RETURN NEW; END $$ LANGUAGE plpgsql""",
        "CREATE TRIGGER poison BEFORE INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION poison()",
    ],
}


@pytest.fixture
def poison_trigger(engine):
    """Make the database itself refuse one caption, as a constraint or a bad value would."""
    with engine.begin() as conn:
        for statement in POISON_TRIGGERS[conn.dialect.name]:
            conn.execute(sa.text(statement))
    yield
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER poison" + (" ON tasks" if conn.dialect.name == "postgresql" else "")))
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("DROP FUNCTION poison()"))


def count(engine, table, *where) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(table).where(*where))


def test_one_job_persists_many_deliveries_in_batches(client, config, engine):
    ids = [new_uuid() for _ in range(250)]
    for task in ids:
        assert post(client, wrapped(success(task))).status_code == 202
    queued = redis.Redis.from_url(config.redis_url).llen(f"rq:queue:{PERSIST_QUEUE}")
    assert queued == 1, "a single drain job is enqueued for a burst of deliveries"

    run_worker(config.redis_url, PERSIST_QUEUE)

    assert count(engine, tasks, tasks.c.status == "success") == 250
    assert count(engine, deliveries) == 250
    conn = redis.Redis.from_url(config.redis_url)
    assert conn.xlen(DELIVERY_STREAM) == 0
    assert not conn.exists(DRAIN_FLAG)


def test_a_rejected_item_does_not_sink_its_batch(client, config, engine, poison_trigger):
    good = [new_uuid() for _ in range(9)]
    bad = new_uuid()
    for task in good[:4]:
        post(client, wrapped(success(task)))
    post(client, wrapped(success(bad, text="poison")))
    for task in good[4:]:
        post(client, wrapped(success(task)))

    run_worker(config.redis_url, PERSIST_QUEUE)

    assert count(engine, tasks, tasks.c.task_uuid.in_(good), tasks.c.status == "success") == 9
    assert count(engine, tasks, tasks.c.task_uuid == bad) == 0
    with engine.connect() as conn:
        letter = conn.execute(sa.select(dead_letters)).mappings().one()
        logged = conn.execute(sa.select(deliveries).where(deliveries.c.id == letter["delivery_id"])).mappings().one()
    assert letter["task_uuid"] == bad
    assert "poison caption refused" in letter["reason"]
    assert letter["item"]["text"] == "poison"
    assert logged["outcome"] == "rejected" and "dead-lettered" in logged["detail"]
    assert redis.Redis.from_url(config.redis_url).xlen(DELIVERY_STREAM) == 0


def test_a_batch_seen_again_after_a_crash_is_stored_once(client, config, engine):
    task = new_uuid()
    post(client, wrapped(success(task)))
    conn = redis.Redis.from_url(config.redis_url)
    drainer = Drainer(conn, engine, batch_size=100)
    ensure_group(conn)
    entries = drainer.read(None)
    drainer.persist(entries)
    # The same entries again, as if the worker died between the commit and the acknowledgement.
    assert write(engine, [to_delivery(i, f) for i, f in entries]) == 0
    with engine.connect() as c:
        row = c.execute(sa.select(tasks).where(tasks.c.task_uuid == task)).mappings().one()
    assert row["delivery_count"] == 1
    assert count(engine, deliveries) == 1


def test_a_backlog_wakes_a_second_drain_which_stops_when_idle(client, config, engine):
    for _ in range(30):
        post(client, wrapped(success(new_uuid())))
    conn = redis.Redis.from_url(config.redis_url)
    conn.delete(f"rq:queue:{PERSIST_QUEUE}")  # the drain the first POST enqueued: run it here instead

    stored = Drainer(conn, engine, batch_size=10, concurrency=2).run()

    assert stored == 30
    jobs = [Job.fetch(job_id.decode(), connection=conn) for job_id in conn.lrange(f"rq:queue:{PERSIST_QUEUE}", 0, -1)]
    assert [job.kwargs for job in jobs] == [{"slot": 1}], "a full batch enqueued one drain for slot 1"
    assert conn.exists(drain_flag(1))
    run_worker(config.redis_url, PERSIST_QUEUE)
    assert not conn.exists(drain_flag(1)), "the extra drain cleared its flag when it found no work"
    assert count(engine, tasks) == 30
