"""kill -9 on the real stack: an RQ worker mid-batch, a gunicorn worker mid-request.

Each test runs real processes (`python -m workers persist`, `python -m workers cron`
with the drain sweep, gunicorn) and kills one with SIGKILL at a chosen point. A database
trigger that waits while a "brake" row exists holds a batch inside its
transaction, so the kill lands in the middle of a batch every time, not by luck.
The promise checked: every acknowledged delivery ends up in the store exactly
once, within seconds (stale entries are reclaimed after PERSIST_STALE_AFTER_MS,
1 s here), not after RQ's ten-minute maintenance pass.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
import redis
import requests
import sqlalchemy as sa

from receiver import create_app
from store.schema import dead_letters
from store.schema import deliveries
from store.schema import tasks
from tests.conftest import TOKENS
from tests.conftest import clear
from tests.helpers import WEBHOOK
from tests.helpers import new_uuid
from tests.helpers import post
from tests.helpers import success
from tests.helpers import wrapped
from tests.support import SWEEP_EVERY_SECOND
from tests.support import Gunicorn
from tests.support import Service
from tests.support import alive
from tests.support import children
from tests.support import run_worker
from tests.support import wait_for
from workers.maintenance import RESCUE_KEY
from workers.maintenance import sweep_stream
from workers.persist import ensure_group
from workers.queues import DELIVERY_GROUP
from workers.queues import DELIVERY_STREAM
from workers.queues import DRAIN_FLAG
from workers.queues import PERSIST_QUEUE

pytestmark = pytest.mark.slow

STALE_MS = 1000

BRAKE = [
    "CREATE TABLE brake (engaged boolean)",
    """CREATE FUNCTION brake() RETURNS trigger AS $$ BEGIN
         WHILE EXISTS (SELECT 1 FROM brake) LOOP PERFORM pg_sleep(0.05); END LOOP;
         RETURN NULL; END $$ LANGUAGE plpgsql""",
    "CREATE TRIGGER brake BEFORE INSERT ON deliveries FOR EACH STATEMENT EXECUTE FUNCTION brake()",
]
RELEASE_BRAKE = ["DROP TRIGGER IF EXISTS brake ON deliveries", "DROP FUNCTION IF EXISTS brake()",
                 "DROP TABLE IF EXISTS brake"]


def count(engine, table, *where) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(table).where(*where))


def pending(conn: redis.Redis) -> int:
    try:
        return conn.xpending(DELIVERY_STREAM, DELIVERY_GROUP)["pending"]
    except redis.ResponseError:
        return 0


@pytest.fixture
def env(redis_url, postgres_url, monkeypatch):
    clear(postgres_url)
    values = {"APP_ENV": "development", "REDIS_URL": redis_url, "DATABASE_URL": postgres_url,
              "PERSIST_STALE_AFTER_MS": str(STALE_MS), **TOKENS}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def engine(env):
    engine = sa.create_engine(env["DATABASE_URL"])
    yield engine
    engine.dispose()


@pytest.fixture
def client(env):
    app = create_app(kind="intake")
    yield app.test_client()
    app.extensions["redis"].close()


@pytest.fixture
def stack(env, tmp_path):
    """A persist worker and the cron process that runs the sweep; stopped (and their leftovers killed) after."""
    config_file = tmp_path / "sweep_schedule.py"
    config_file.write_text(SWEEP_EVERY_SECOND)
    services = {"worker": Service.worker(PERSIST_QUEUE, env).start(), "cron": Service.cron(config_file, env).start()}
    yield services
    for service in services.values():
        service.stop()


@pytest.fixture
def brake(postgres_url):
    """Hold every delivery-log insert inside its transaction while engaged."""
    engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")

    class Brake:
        def engage(self):
            with engine.connect() as conn:
                conn.execute(sa.text("INSERT INTO brake VALUES (true)"))

        def release(self):
            with engine.connect() as conn:
                conn.execute(sa.text("DELETE FROM brake"))

        def holding(self) -> bool:
            """A drain's batch is waiting in the trigger, inside its transaction."""
            with engine.connect() as conn:
                return bool(conn.scalar(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event = 'PgSleep'")))

    with engine.connect() as conn:
        for statement in BRAKE:
            conn.execute(sa.text(statement))
    yield Brake()
    with engine.connect() as conn:
        conn.execute(sa.text("DELETE FROM brake"))
        # A killed drain's backend may still hold its lock until it notices its client is gone.
        conn.execute(sa.text("SET lock_timeout = '20s'"))
        for statement in RELEASE_BRAKE:
            conn.execute(sa.text(statement))
    engine.dispose()


def horse_of(worker: Service) -> int:
    return wait_for(lambda: children(worker.pid), timeout=10, what="the work horse")[0]


@pytest.mark.postgres
@pytest.mark.parametrize("victim", ["horse", "worker", "horse-after-commit"])
def test_kill_9_of_a_persist_worker_mid_batch_loses_and_doubles_nothing(victim, env, stack, brake, engine, client):
    conn = redis.Redis.from_url(env["REDIS_URL"])
    uuids = [new_uuid() for _ in range(200)]

    brake.engage()
    for task in uuids:
        assert post(client, wrapped(success(task))).status_code == 202
    # The drain may have read a first batch before every delivery was in: any batch held will do.
    wait_for(lambda: pending(conn) > 0 and brake.holding(), timeout=30, what="a batch held mid-transaction")
    assert count(engine, deliveries) == 0

    killed_at = time.monotonic()
    if victim == "horse":
        os.kill(horse_of(stack["worker"]), signal.SIGKILL)
    elif victim == "worker":
        # The whole worker (parent and horse), as when its container or host is lost; a new one starts.
        horse = horse_of(stack["worker"])
        stack["worker"].kill()
        wait_for(lambda: not alive(horse), what="the horse to die with its worker")
        stack["worker"] = Service.worker(PERSIST_QUEUE, env).start()
    else:
        # The batch commits, but the drain dies before it can acknowledge the entries.
        horse = horse_of(stack["worker"])
        held = pending(conn)
        conn.client_pause(20_000, all=False)
        brake.release()
        wait_for(lambda: count(engine, deliveries) == held, timeout=20, what="the batch to commit")
        os.kill(horse, signal.SIGKILL)
        wait_for(lambda: not alive(horse), what="the horse to die")
        conn.client_unpause()
        assert pending(conn) == held, "the entries were not acknowledged"
    brake.release()

    wait_for(lambda: count(engine, tasks) == len(uuids) and conn.xlen(DELIVERY_STREAM) == 0, timeout=60,
             what="every delivery stored and acknowledged")
    recovered_in = time.monotonic() - killed_at

    assert count(engine, deliveries) == len(uuids)
    assert count(engine, tasks, tasks.c.delivery_count == 1, tasks.c.status == "success") == len(uuids)
    assert count(engine, dead_letters) == 0
    assert recovered_in < 30, f"recovered in {recovered_in:.1f}s, far under RQ's 600 s maintenance pass"
    assert stack["worker"].running() and stack["cron"].running()


def test_the_sweep_enqueues_a_drain_only_when_one_is_needed(redis_url):
    conn = redis.Redis.from_url(redis_url)
    assert sweep_stream(conn, STALE_MS) == "idle"

    conn.xadd(DELIVERY_STREAM, {"body": b"{}", "at": 0})
    assert sweep_stream(conn, STALE_MS) == "enqueued"
    assert sweep_stream(conn, STALE_MS) == "draining", "the flag says a drain is on its way"

    # A drain reads the entry and dies without acknowledging it; its flag outlives it.
    ensure_group(conn)
    conn.xreadgroup(DELIVERY_GROUP, "dead-drain", {DELIVERY_STREAM: ">"}, count=10)
    assert sweep_stream(conn, STALE_MS) == "draining", "not yet stale"
    time.sleep(STALE_MS / 1000 + 0.1)
    assert sweep_stream(conn, STALE_MS) == "rescued"
    assert sweep_stream(conn, STALE_MS) == "draining", "one rescue per stale period"
    assert conn.exists(DRAIN_FLAG) and conn.exists(RESCUE_KEY)
    assert conn.llen(f"rq:queue:{PERSIST_QUEUE}") == 2


def test_the_sweep_rescues_entries_no_drain_reads(redis_url):
    """A flag without a drain (restored by Redis after a restart, or its drain killed): new entries wait."""
    conn = redis.Redis.from_url(redis_url)
    ensure_group(conn)
    conn.set(DRAIN_FLAG, 1, ex=30)
    conn.xadd(DELIVERY_STREAM, {"body": b"{}", "at": 0})
    assert sweep_stream(conn, STALE_MS) == "draining"
    time.sleep(STALE_MS / 1000 + 0.1)
    assert sweep_stream(conn, STALE_MS) == "rescued"
    assert conn.llen(f"rq:queue:{PERSIST_QUEUE}") == 1


# -- gunicorn ----------------------------------------------------------------------------------


@pytest.fixture
def web(redis_url, sqlite_url, monkeypatch):
    """The intake's gunicorn with one worker (so the one to kill is known), over SQLite."""
    clear(sqlite_url)
    env = {"APP_ENV": "development", "REDIS_URL": redis_url, "DATABASE_URL": sqlite_url, **TOKENS}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    server = Gunicorn(env, workers=1, kind="intake")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sqlite_engine(sqlite_url):
    engine = sa.create_engine(sqlite_url)
    yield engine
    engine.dispose()


def request_head(body: bytes) -> bytes:
    return (f"POST {WEBHOOK}?token=hook-new HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()


def answer(sock: socket.socket) -> bytes:
    """What the server sent back before the connection ended ("" when it died first)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def gunicorn_worker(server: Gunicorn, other_than: int | None = None) -> int:
    def worker():
        pids = [pid for pid in children(server.process.pid) if pid != other_than]
        return pids[0] if pids else None

    return wait_for(worker, timeout=30, what="a gunicorn worker")


def retry_until_accepted(server: Gunicorn, body: bytes) -> requests.Response:
    """The sender's retry: again until a 2xx, as Runware does."""

    def attempt():
        try:
            response = requests.post(f"{server.url}{WEBHOOK}", params={"token": "hook-new"}, data=body,
                                     headers={"Content-Type": "application/json"}, timeout=5)
        except requests.ConnectionError:
            return None
        return response if response.ok else None

    return wait_for(attempt, timeout=30, interval=0.2, what="the retried webhook to be accepted")


@pytest.mark.parametrize("moment", ["reading the body", "queueing in Redis"])
def test_kill_9_of_a_gunicorn_worker_mid_request(moment, web, redis_url, sqlite_engine):
    conn = redis.Redis.from_url(redis_url)
    engine = sqlite_engine
    task = new_uuid()
    body = wrapped(success(task, text="a harbour at night", cost=0.0021))
    worker = gunicorn_worker(web)
    sock = socket.create_connection(("127.0.0.1", web.port), timeout=20)

    if moment == "reading the body":
        sock.sendall(request_head(body) + body[: len(body) // 2])
        time.sleep(0.5)
        os.kill(worker, signal.SIGKILL)
        queued_before_retry = 0
    else:
        conn.client_pause(10_000, all=False)  # Redis takes no writes: the worker waits inside its group's round trip
        sock.sendall(request_head(body) + body)
        wait_for(lambda: conn.info("clients")["blocked_clients"] >= 1, timeout=5, what="the worker's XADD to wait")
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: not alive(worker), what="the worker to die")
        conn.client_unpause()
        # Whether Redis ran the dead worker's XADD or not, the sender saw no 2xx and retries.
        queued_before_retry = conn.xlen(DELIVERY_STREAM)
        assert queued_before_retry in (0, 1)
    reply = answer(sock)
    sock.close()
    assert not reply.startswith(b"HTTP/1.1 2"), reply
    assert conn.xlen(DELIVERY_STREAM) == queued_before_retry

    gunicorn_worker(web, other_than=worker)  # the master replaces the dead worker
    assert retry_until_accepted(web, body).status_code == 202
    # A worker killed between setting the drain flag and enqueueing the drain leaves the flag with no drain
    # queued (the retry then enqueues none): the cron's sweep rescues entries that waited the stale period.
    time.sleep(STALE_MS / 1000 + 0.1)
    sweep_stream(conn, STALE_MS)
    run_worker(redis_url, PERSIST_QUEUE)

    with engine.connect() as c:
        row = c.execute(sa.select(tasks).where(tasks.c.task_uuid == task)).mappings().one()
        logged = c.execute(sa.select(deliveries)).mappings().all()
    assert (row["status"], row["text"], float(row["cost"])) == ("success", "a harbour at night", 0.0021)
    assert row["delivery_count"] == len(logged) == queued_before_retry + 1
    assert all(d["size"] == len(body) and d["outcome"] == "stored" for d in logged), "no delivery is half-stored"


@pytest.mark.parametrize("queue", ["persist", "submit", "maintenance"])
def test_an_idle_worker_stops_at_once_on_sigterm(queue, env):
    """SIGTERM to a worker waiting for a job ends it (exit 0) within seconds, not when a supervisor's patience ends."""
    worker = Service.worker(queue, env).start()
    try:
        conn = redis.Redis.from_url(env["REDIS_URL"])

        def idle() -> bool:  # RQ registers a worker before it installs its signal handlers: wait until it waits
            return any(conn.hget(key, "state") == b"idle" for key in conn.smembers(f"rq:workers:{queue}"))

        wait_for(idle, timeout=30, what=f"the {queue} worker to wait for a job")
        started = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        code = worker.process.wait(timeout=25)
        assert (code, time.monotonic() - started < 10) == (0, True), worker.output()[-2000:]
    finally:
        worker.stop()
