"""Redis failover under load: the primary killed, Sentinel promotes its replica, nothing acknowledged is lost.

The service's real intake (gunicorn), persist worker and cron process find Redis
through three sentinels (REDIS_SENTINELS). Webhooks flow from sender threads that
retry until a 2xx, as Runware does; the primary gets SIGKILL mid-run, and once the
replica is promoted it comes back and Sentinel makes it the new replica. Webhooks may
see 503 while there is no primary, never a hang or another error; with
REDIS_MIN_REPLICAS_ACK=1 every acknowledged delivery was on the replica before its
2xx, so each reaches the store exactly once. Without it (0) a delivery the primary
confirmed but had not yet sent on may be lost: that is only counted, and none is doubled.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest
import sqlalchemy as sa

from config import Config
from store.schema import deliveries
from tests.acknowledged import Sender
from tests.acknowledged import Workers
from tests.acknowledged import assert_exactly_once
from tests.acknowledged import ledger
from tests.conftest import TOKENS
from tests.conftest import clear
from tests.sentinel import MASTER
from tests.sentinel import SentinelCluster
from tests.support import Gunicorn
from tests.support import Service
from tests.support import wait_for
from workers.connection import connect
from workers.queues import DELIVERY_STREAM
from workers.queues import PERSIST_QUEUE

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hosts")]  # not beside tests/test_multihost.py

ACKED_BEFORE = 100
"""Deliveries acknowledged by the first primary before it is killed."""

ACKED_AFTER = 100
"""Deliveries acknowledged by the new primary before the senders stop."""


@pytest.fixture
def cluster():
    if not shutil.which("redis-sentinel"):
        if os.environ.get("REQUIRE_SENTINEL") == "1":
            pytest.fail("redis-sentinel is not installed and REQUIRE_SENTINEL=1")
        pytest.skip("redis-sentinel is not installed (Debian/Ubuntu: apt-get install redis-sentinel)")
    cluster = SentinelCluster().start()
    yield cluster
    cluster.close()


def through_sentinel(cluster: SentinelCluster, sqlite_url: str, monkeypatch, **settings: str) -> dict[str, str]:
    """The service's settings (in this process's environment too) for Redis through the cluster's sentinels."""
    clear(sqlite_url)
    env = {"APP_ENV": "development", "REDIS_SENTINELS": cluster.addresses, "REDIS_SENTINEL_MASTER": MASTER,
           "DATABASE_URL": sqlite_url, "PERSIST_STALE_AFTER_MS": "1000", **TOKENS, **settings}
    monkeypatch.delenv("REDIS_URL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_a_worker_through_sentinel_stops_at_once_when_idle(cluster, sqlite_url, monkeypatch):
    """RQ's warm shutdown interrupts its blocking dequeue; the connection must not be reused half-read."""
    worker = Service.worker(PERSIST_QUEUE, through_sentinel(cluster, sqlite_url, monkeypatch)).start()
    conn = connect(Config.from_env())
    try:
        wait_for(lambda: conn.scard("rq:workers"), timeout=30, what="the worker to register")
        time.sleep(0.5)  # in its blocking dequeue
        asked = time.monotonic()
        worker.process.terminate()
        worker.process.wait(timeout=10)
        assert time.monotonic() - asked < 5 and not conn.scard("rq:workers"), "it ended, and said so in Redis"
    finally:
        worker.stop()
        conn.close()


@pytest.mark.parametrize("replicas_ack", [1, 0])
def test_primary_killed_under_load_fails_over(cluster, replicas_ack, sqlite_url, tmp_path, monkeypatch, request):
    env = through_sentinel(cluster, sqlite_url, monkeypatch, REDIS_MIN_REPLICAS_ACK=str(replicas_ack))
    web = Gunicorn(env, workers=2, kind="intake")
    request.addfinalizer(web.stop)
    web.start()
    workers = Workers(env, tmp_path)
    request.addfinalizer(workers.stop)
    workers.start()
    sender = Sender(web.url).start()
    try:
        wait_for(lambda: len(sender.acked) >= ACKED_BEFORE, timeout=30, what="webhooks acknowledged")
        cluster.kill_primary()
        killed = time.monotonic()
        wait_for(cluster.promoted, timeout=30, what="Sentinel to promote the replica")
        switch_s = time.monotonic() - killed
        cluster.primary.start()  # restarted, as systemd would: Sentinel makes it the new primary's replica
        promoted_at = len(sender.acked)
        wait_for(lambda: len(sender.acked) >= promoted_at + ACKED_AFTER, timeout=30,
                 what="webhooks acknowledged by the new primary")
    finally:
        sender.stop()
    conn = connect(Config.from_env())
    engine = sa.create_engine(sqlite_url)
    try:
        wait_for(lambda: conn.xlen(DELIVERY_STREAM) == 0, timeout=60, what="the new primary's stream to drain")
        assert workers.still_the_same(), "the worker and the cron process followed the failover without a restart"
        with engine.connect() as db:
            logged = set(db.scalars(sa.select(deliveries.c.id)))
        lost = {task: delivery for task, delivery in sender.acked.items() if delivery not in logged}
        log = web.output()
        print(f"\nfailover, REDIS_MIN_REPLICAS_ACK={replicas_ack}: switch {switch_s:.1f} s, "
              f"{len(sender.acked)} acknowledged, {len(sender.acked) - len(lost)} stored, {len(lost)} lost; "
              f"answers refused: {sender.refused} ({log.count('Redis unavailable')} Redis unavailable, "
              f"{log.count('replicas behind')} replicas behind)")
        assert set(sender.refused) <= {"503"}, "only 503s while there is no primary: no hang, no other error"
        assert sender.refused, "the senders saw the switch"
        if replicas_ack:
            assert_exactly_once(engine, sender.acked, sender.attempts)
        else:
            stored, counted = ledger(engine)
            assert all(stored[task]["delivery_count"] == counted[task] for task in sender.acked if task not in lost)
            assert all(counted[task] <= sender.attempts[task] for task in sender.acked if task not in lost)
    finally:
        conn.close()
        engine.dispose()
