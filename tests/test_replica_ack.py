"""REDIS_MIN_REPLICAS_ACK: a webhook is answered 2xx only once its entry reached that many replicas (Redis WAIT).

Against a real primary, first alone, then with a replica: alone, the webhook is
answered 503 with Retry-After and counted as `replicas_behind`, though its entry
is on the primary; the sender's retry is answered 202 once a replica confirms,
and the drain stores the task once from the two entries.
"""

from __future__ import annotations

import pytest
import redis
import sqlalchemy as sa
from prometheus_client import REGISTRY

from config import Config
from receiver import create_app
from store.schema import tasks
from tests.conftest import TOKENS
from tests.conftest import clear
from tests.helpers import new_uuid
from tests.helpers import post
from tests.helpers import success
from tests.helpers import wrapped
from tests.sentinel import WatchedServer
from tests.support import run_worker
from tests.support import wait_for
from workers.queues import DELIVERY_STREAM
from workers.queues import PERSIST_QUEUE


def behind() -> float:
    return REGISTRY.get_sample_value("captions_webhook_requests_total", {"outcome": "replicas_behind"}) or 0.0


@pytest.fixture
def primary():
    server = WatchedServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def replica(primary):
    server = WatchedServer(primary)
    yield server
    server.close()


def test_too_few_replicas_is_a_503_and_the_retry_is_stored_once(primary, replica, sqlite_url, monkeypatch):
    clear(sqlite_url)
    env = {"APP_ENV": "development", "REDIS_URL": primary.url, "DATABASE_URL": sqlite_url,
           "REDIS_MIN_REPLICAS_ACK": "1", "REDIS_REPLICA_ACK_TIMEOUT_MS": "200", **TOKENS}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    app = create_app(Config.from_env(), kind="intake")
    client, conn = app.test_client(), redis.Redis.from_url(primary.url)
    task, before = new_uuid(), behind()
    body = wrapped(success(task))

    refused = post(client, body)
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
    assert behind() == before + 1
    assert conn.xlen(DELIVERY_STREAM) == 1, "the refused entry is on the primary, a duplicate to come"

    replica.start()
    wait_for(lambda: redis.Redis(port=replica.port).info("replication")["master_link_status"] == "up",
             timeout=30, what="the replica to sync")
    accepted = post(client, body)
    assert accepted.status_code == 202 and behind() == before + 1
    delivery = accepted.get_json()["delivery"]
    assert redis.Redis(port=replica.port).xrange(DELIVERY_STREAM, delivery, delivery), "on the replica at the 202"

    run_worker(primary.url, PERSIST_QUEUE)
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as db:
        row = db.execute(sa.select(tasks).where(tasks.c.task_uuid == task)).mappings().one()
    engine.dispose()
    assert (row["status"], float(row["cost"]), row["delivery_count"]) == ("success", 0.0019, 2)
    app.extensions["redis"].close()
