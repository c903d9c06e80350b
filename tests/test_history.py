"""A task's whole history in `GET /api/tasks/<uuid>`, on both stores.

Deliveries (when, from where, outcome, the item, whether it changed the stored
result) through the real intake and drain; submission attempts and polls through
the real submit and reconcile jobs against the emulator; all in time order, read
through an index, and kept as long as the delivery log.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from store import history
from store.schema import task_events
from store.schema import utcnow
from tests.helpers import failure
from tests.helpers import new_uuid
from tests.helpers import post
from tests.helpers import success
from tests.helpers import wrapped
from tests.submitting import emulator  # noqa: F401  (fixture)
from tests.submitting import queue
from tests.submitting import use_runware  # noqa: F401  (fixture)
from tests.support import run_worker
from workers import maintenance
from workers import reconcile as reconcile_module
from workers.queues import PERSIST_QUEUE
from workers.reconcile import reconcile
from workers.runware import RetryableError
from workers.submit import submit_queued

READ = {"Authorization": "Bearer read-token"}


def task_history(client, task: str) -> list[dict]:
    response = client.get(f"/api/tasks/{task}", headers=READ)
    assert response.status_code == 200, response.json
    return response.json["history"]


def test_every_delivery_is_in_the_history_with_what_it_changed(client, config):
    task = new_uuid()
    first = post(client, wrapped(errors=(failure(task, "timeoutProvider", "the provider timed out"),)))
    second = post(client, wrapped(success(task, text="<img src=x onerror=alert(1)> a cat", cost=0.0019)))
    third = post(client, wrapped(success(task, text="<img src=x onerror=alert(1)> a cat", cost=0.0019)))
    fourth = post(client, wrapped(success(task, text="a dog", cost=0.0019), {"taskUUID": "not-a-uuid"}))
    run_worker(config.redis_url, PERSIST_QUEUE)

    events = task_history(client, task)
    assert [e["kind"] for e in events] == ["delivery"] * 4
    assert [e["delivery"]["id"] for e in events] == [r.json["delivery"] for r in (first, second, third, fourth)]
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    assert [e["status"] for e in events] == ["error", "success", "success", "success"]
    # the error was the result until the success outranked it; the duplicate and the conflicting
    # success came later and changed nothing (the first success received is kept)
    assert [e["changedResult"] for e in events] == [True, True, False, False]
    assert events[0]["detail"] == "timeoutProvider: the provider timed out"
    assert {e["delivery"]["remoteAddr"] for e in events} == {"127.0.0.1"}
    assert [e["delivery"]["outcome"] for e in events] == ["stored", "stored", "stored", "partial"]
    assert events[1]["delivery"]["item"] == {"taskUUID": task, "status": "success", "taskType": "imageCaption",
                                             "text": "<img src=x onerror=alert(1)> a cat", "cost": "0.0019"}
    assert events[3]["delivery"]["item"]["text"] == "a dog"
    assert all(e["delivery"]["storedAt"] >= e["at"] for e in events)
    body = client.get(f"/api/tasks/{task}", headers=READ).json
    assert body["text"] == "<img src=x onerror=alert(1)> a cat" and body["conflict"] is True


def test_what_changed_the_result_follows_receipt_order_not_the_drains_order(client, config, engine):
    """Two errors stored in the opposite order to their receipt: the first received is the result, and says so."""
    from store.results import Delivery
    from store.results import Result
    from store.results import save_deliveries

    task, now = new_uuid(), utcnow()
    late = Delivery("2-0", now, "10.0.0.2", 10, [Result(task, "error", now, error_code="late")])
    early = Delivery("1-0", now - timedelta(seconds=5), "10.0.0.1", 10,
                     [Result(task, "error", now - timedelta(seconds=5), error_code="early")])
    with engine.begin() as conn:
        save_deliveries(conn, [late])
    with engine.begin() as conn:
        save_deliveries(conn, [early])
    events = task_history(client, task)
    assert [(e["detail"], e["changedResult"]) for e in events] == [("early", True), ("late", False)]
    assert client.get(f"/api/tasks/{task}", headers=READ).json["errorCode"] == "early"


def test_submission_attempts_and_polls_are_in_the_history_in_order(client, config, engine, emulator,  # noqa: F811
                                                                   use_runware, monkeypatch):  # noqa: F811
    """A refused send, the send Runware took, a poll still processing, the poll that found the caption."""
    monkeypatch.setattr(reconcile_module, "POLL_BACKOFF_BASE_S", 0.05)
    use_runware(emulator(unavailable_rate=1.0), RECONCILE_AFTER_SECONDS=1)
    [task] = queue(engine, 1)
    with pytest.raises(RetryableError):
        submit_queued()
    use_runware(emulator(drop_rate=1.0, processing_ms=2500), RECONCILE_AFTER_SECONDS=1)
    submit_queued()
    time.sleep(1.05)  # RECONCILE_AFTER_SECONDS
    reconcile()  # the caption is not ready yet
    found = None
    for _ in range(40):
        time.sleep(0.1)
        reconcile()
        found = client.get(f"/api/tasks/{task}", headers=READ).json
        if found["status"] == "success":
            break
    assert found["status"] == "success", found
    events = found["history"]

    kinds = [e["kind"] for e in events]
    assert kinds[:2] == ["submission", "submission"] and set(kinds[2:]) == {"poll"} and len(kinds) >= 4
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    refused, taken, waiting, answered = events[0], events[1], events[2], events[-1]
    assert refused["status"] is None and refused["detail"].startswith("to be sent again: Runware answered 503")
    assert taken["status"] == "submitted" and taken["changedResult"] is False
    assert waiting["status"] is None and waiting["detail"].startswith("no result yet; next poll at ")
    assert answered["status"] == "success" and answered["changedResult"] is True
    assert all(e["changedResult"] is False for e in events[:-1])
    assert all("delivery" not in e for e in events)


def test_the_history_is_read_through_its_index(engine):
    query = sa.select(task_events).where(task_events.c.task_uuid == new_uuid()).order_by(task_events.c.at)
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            plan = " ".join(str(row[-1]) for row in conn.execute(sa.text(
                "EXPLAIN QUERY PLAN " + str(query.compile(conn, compile_kwargs={"literal_binds": True})))))
        else:
            # Whatever the table holds after other tests: say what the index serves, in its order.
            conn.execute(sa.text("SET enable_seqscan = off"))
            conn.execute(sa.text("SET enable_bitmapscan = off"))
            plan = " ".join(row[0] for row in conn.execute(sa.text(
                "EXPLAIN " + str(query.compile(conn, compile_kwargs={"literal_binds": True})))))
    assert "ix_task_events_task" in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan  # the index gives the time order too


def test_the_history_is_kept_as_long_as_the_delivery_log(client, config, engine):
    task = new_uuid()
    post(client, wrapped(success(task)))
    run_worker(config.redis_url, PERSIST_QUEUE)
    with engine.begin() as conn:
        conn.execute(task_events.insert(), [{"task_uuid": task, "at": utcnow() - timedelta(days=40), "kind": "poll",
                                             "detail": "no result yet"}])
        assert len(history.task_history(conn, task)) == 2

    deleted = maintenance.purge(engine, utcnow() - timedelta(days=30))

    assert deleted["task_events"] == 1
    with engine.connect() as conn:
        assert [e["kind"] for e in history.task_history(conn, task)] == ["delivery"]
