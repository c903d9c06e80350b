"""Backpressure: a store outage fills Redis to its bound, webhooks get 503, and it all drains by itself.

Real parts throughout: redis-server with deploy/redis.conf (AOF fsynced always) and
a small `maxmemory`, PostgreSQL behind a TCP relay the test cuts, gunicorn serving
the intake, `python -m workers persist|submit|cron` processes. Redis refusing
writes is made real too: `CONFIG SET maxmemory` below what a live server holds
(OOM), and a replica that refuses writes until it is promoted (READONLY).
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from receiver import create_app
from receiver.backpressure import RETRY_AFTER_STALLED_S
from store.schema import deliveries
from store.schema import tasks
from store.schema import utcnow
from tests.chromium import new_tab
from tests.chromium import open_tabs
from tests.chromium import wait_until as page_wait
from tests.conftest import TOKENS
from tests.conftest import clear
from tests.helpers import new_uuid
from tests.helpers import post
from tests.helpers import success
from tests.helpers import wrapped
from tests.support import ROOT
from tests.support import SWEEP_EVERY_SECOND
from tests.support import Gunicorn
from tests.support import ProjectRedisServer
from tests.support import RedisServer
from tests.support import Service
from tests.support import TcpProxy
from tests.support import free_port
from tests.support import wait_for
from tests.support import with_intake
from workers.persist import ensure_group
from workers.queues import DELIVERY_STREAM
from workers.queues import queue_delivery

BOUND = "8mb"
"""The test's Redis bound: small, so that a few thousand deliveries fill it."""

CAPTION = "a long caption " * 200
"""About 3 KB of text per delivery: the bound is reached in a couple of thousand requests."""


class BoundedRedis(ProjectRedisServer):
    """The project's Redis configuration with a small `maxmemory`."""

    def argv(self) -> list[str]:
        return [*super().argv(), "--maxmemory", BOUND]


@pytest.fixture
def bounded_redis():
    server = BoundedRedis()
    server.start()
    yield server
    server.close()


def environment(redis_url: str, database_url: str) -> dict[str, str]:
    """Settings for the processes. A drain's read of a batch sits in Redis's output buffer, counted in
    its memory: batches of 200 bodies of 3 KB fit the headroom of an 8 MB bound, 1000 would not."""
    return {"APP_ENV": "development", "REDIS_URL": redis_url, "DATABASE_URL": database_url, **TOKENS,
            "PERSIST_BATCH_SIZE": "200"}


def stored(engine: sa.Engine) -> tuple[list[str], set[str]]:
    """Delivery ids in the delivery log (with repeats, if any), and the task UUIDs stored."""
    with engine.connect() as conn:
        ids = list(conn.scalars(sa.select(deliveries.c.id)))
        uuids = set(conn.scalars(sa.select(tasks.c.task_uuid)))
    return ids, uuids


def refused(conn: redis.Redis) -> dict[str, int]:
    """The commands Redis refused since it started (for memory, or any other reason), with their counts."""
    stats = conn.info("commandstats")
    return {name: stat["rejected_calls"] for name, stat in stats.items() if stat.get("rejected_calls")}


@pytest.fixture
def postgres_behind_proxy(postgres_url):
    """(the URL through a relay the test can cut, the direct URL, the relay)."""
    clear(postgres_url)
    target = make_url(postgres_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432).start()
    through = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    yield through, postgres_url, proxy
    proxy.cut()


class Sender:
    """Webhook senders on a few threads, as Runware would post: every answer counted, every 202 kept."""

    def __init__(self, url: str, threads: int = 4):
        self.url = url
        self.threads = threads
        self.acknowledged: dict[str, str] = {}  # taskUUID -> delivery id
        self.answers: dict[int, int] = {}
        self.retry_after: list[int] = []
        self.lock = threading.Lock()

    def post(self, session: requests.Session) -> int:
        task = new_uuid()
        response = session.post(self.url, data=wrapped(success(task, text=CAPTION)),
                                headers={"Content-Type": "application/json"}, timeout=10)
        with self.lock:
            self.answers[response.status_code] = self.answers.get(response.status_code, 0) + 1
            if response.status_code == 202:
                self.acknowledged[task] = response.json()["delivery"]
            elif response.status_code == 503:
                self.retry_after.append(int(response.headers["Retry-After"]))
        return response.status_code

    def until_refused(self, refusals: int = 20, limit: int = 20_000) -> None:
        """Post until each thread got `refusals` 503s in a row (or `limit` requests in all)."""
        def run():
            in_a_row = 0
            with requests.Session() as session:
                while in_a_row < refusals and sum(self.answers.values()) < limit:
                    in_a_row = in_a_row + 1 if self.post(session) == 503 else 0

        threads = [threading.Thread(target=run) for _ in range(self.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


@pytest.mark.postgres
@pytest.mark.timeout(300)
def test_a_store_outage_fills_redis_to_the_mark_then_everything_drains_by_itself(bounded_redis,
                                                                                 postgres_behind_proxy, tmp_path):
    url, direct_url, proxy = postgres_behind_proxy
    env = environment(bounded_redis.url + "/0", url)
    schedule = tmp_path / "schedule.py"
    schedule.write_text(SWEEP_EVERY_SECOND)
    conn = redis.Redis.from_url(bounded_redis.url)
    web = Gunicorn(env, workers=2, kind="intake")
    processes = [Service.worker("persist", env), Service.worker("persist", env), Service.cron(schedule, env)]
    engine = sa.create_engine(direct_url)
    web.start()
    for process in processes:
        process.start()
    pids = [p.pid for p in processes]
    try:
        sender = Sender(f"{web.url}/webhooks/runware?token=hook-new")
        proxy.cut()
        sender.until_refused()
        memory = conn.info("memory")
        assert set(sender.answers) == {202, 503}, f"only 202 and 503, never another 5xx: {sender.answers}"
        assert len(sender.acknowledged) > 1000, "Redis took deliveries while the store was out"
        assert memory["used_memory"] < memory["maxmemory"]
        assert refused(conn) == {}, "the intake stopped before Redis refused any write"
        assert all(1 <= s <= 300 for s in sender.retry_after)
        assert stored(engine) == ([], set()), "nothing reached the store during the outage"
        assert conn.xlen(DELIVERY_STREAM) == len(sender.acknowledged)

        proxy.restore()
        wait_for(lambda: conn.xlen(DELIVERY_STREAM) == 0, timeout=150, what="the backlog drained")
        ids, uuids = stored(engine)
        assert sorted(ids) == sorted(sender.acknowledged.values()), "every acknowledged delivery stored once"
        assert uuids == set(sender.acknowledged)

        with requests.Session() as session:
            wait_for(lambda: sender.post(session) == 202, timeout=30, interval=0.5, what="intake resumed")
        wait_for(lambda: len(stored(engine)[0]) == len(sender.acknowledged), timeout=30, what="new deliveries stored")
        assert [p.pid for p in processes] == pids and all(p.running() for p in processes), "no process restarted"
        assert web.process.poll() is None
    finally:
        web.stop()
        for process in processes:
            process.stop()
        engine.dispose()


def prefill(conn: redis.Redis, n: int) -> list[str]:
    """`n` deliveries in the stream as the intake writes them, but with no drain enqueued; their task UUIDs.

    The consumer group is made first, as the first drain makes it.
    """
    ensure_group(conn)
    uuids = [new_uuid() for _ in range(n)]
    pipe = conn.pipeline(transaction=False)
    for task in uuids:
        pipe.xadd(DELIVERY_STREAM, {"body": wrapped(success(task, text=CAPTION)), "at": time.time(), "ip": ""})
    pipe.execute()
    return uuids


@pytest.mark.timeout(180)
def test_a_persist_worker_frees_memory_while_redis_refuses_every_write(bounded_redis, database_url):
    env = environment(bounded_redis.url + "/0", database_url)
    conn = redis.Redis.from_url(bounded_redis.url)
    engine = sa.create_engine(database_url)
    uuids = prefill(conn, 1500)
    conn.config_set("maxmemory", "1")  # far below what it holds: every denyoom command and every MULTI refused
    with pytest.raises(redis.OutOfMemoryError):
        conn.set("probe", 1)
    worker = Service.worker("persist", env).start()
    try:
        wait_for(lambda: conn.xlen(DELIVERY_STREAM) == 0, timeout=90, what="the stream drained over the bound")
        assert stored(engine)[1] == set(uuids)
        assert worker.running(), "RQ refused its own bookkeeping, and the worker went on"
        conn.config_set("maxmemory", BOUND)
        task = new_uuid()
        queue_delivery(conn, wrapped(success(task)), None, utcnow())
        wait_for(lambda: task in stored(engine)[1], timeout=60, what="RQ serving the queue again")
        assert worker.running()
    finally:
        worker.stop()
        engine.dispose()


@pytest.mark.timeout(240)
def test_workers_and_the_scheduler_survive_a_read_only_replica_and_redis_out_of_memory(database_url, tmp_path):
    primary = RedisServer()
    primary.start()
    replica = RedisServer("--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", str(primary.port))
    replica.start()
    conn = redis.Redis.from_url(replica.url)
    wait_for(lambda: conn.info("replication")["master_link_status"] == "up", timeout=30, what="the replica synced")
    with pytest.raises(redis.ReadOnlyError):
        conn.set("probe", 1)
    env = environment(replica.url + "/0", database_url)
    schedule = tmp_path / "schedule.py"
    schedule.write_text(SWEEP_EVERY_SECOND)
    processes = [Service.worker("persist", env), Service.worker("submit", env), Service.cron(schedule, env)]
    engine = sa.create_engine(database_url)
    for process in processes:
        process.start()
    try:
        wait_for(lambda: all("ReadOnlyError" in p.output() for p in processes[:2]), timeout=30,
                 what="the workers told READONLY")
        wait_for(lambda: all(p.output().count("serving it again in") >= 2 for p in processes[:2]), timeout=30,
                 what="the workers to try again, with backoff")
        assert all(p.running() for p in processes), "a read-only Redis stops no process"

        conn.replicaof("NO", "ONE")  # the failover: this server now takes writes
        first = prefill(conn, 3)  # no drain enqueued: the scheduler's sweep must enqueue one
        wait_for(lambda: set(first) <= stored(engine)[1], timeout=60, what="deliveries stored after the failover")

        conn.config_set("maxmemory", "1")
        time.sleep(4)  # the scheduler's enqueues and the workers' heartbeats refused meanwhile
        assert all(p.running() for p in processes), "Redis out of memory stops no process"
        conn.config_set("maxmemory", "0")
        second = prefill(conn, 3)
        wait_for(lambda: set(second) <= stored(engine)[1], timeout=60, what="deliveries stored after the OOM")
        assert all(p.running() for p in processes)
    finally:
        for process in processes:
            process.stop()
        engine.dispose()
        replica.close()
        primary.close()


SUPERVISED = """
import sys
sys.path.insert(0, "deploy")
import launch

supervisor = launch.Supervisor({"HOST": "127.0.0.1", "PORT": sys.argv[1]})
supervisor.add_process("dies", f"{sys.executable} -c 'import sys; sys.exit(3)'")
supervisor.add_process("stays", f"{sys.executable} -c 'import time; time.sleep(120)'")
supervisor.loop()
sys.exit(supervisor.returncode)
"""
"""`make run`'s supervisor over a process that exits at once and one that stays."""


@pytest.mark.timeout(60)
def test_make_run_restarts_a_process_that_exits_and_the_others_go_on(tmp_path):
    script = tmp_path / "supervised.py"
    script.write_text(SUPERVISED)
    log = tmp_path / "supervisor.log"
    with open(log, "wb") as out:
        supervisor = subprocess.Popen([sys.executable, str(script), str(free_port())], cwd=ROOT, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: log.read_text().count("dies EXITED (rc=3)") >= 3, timeout=30, what="three restarts")
        output = log.read_text()
        assert supervisor.poll() is None, f"the supervisor goes on:\n{output}"
        assert "stays started" in output and "stays stopped" not in output, output
        assert "starting it again in 1s (restart 1)" in output and "in 2s (restart 2)" in output
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=30)
    assert "stays stopped" in log.read_text()
    assert supervisor.returncode == 143


def intake_status(client) -> dict:
    response = client.get("/api/intake", headers={"Authorization": "Bearer read-token"})
    assert response.status_code == 200, response.json
    return response.json


@pytest.mark.timeout(120)
def test_the_gate_closes_at_the_high_water_mark_and_opens_only_below_the_low_one(config, redis_url):
    """In process, on a real Redis given a bound just under what it holds; webhooks and reads through the apps."""
    fast = dataclasses.replace(config, intake_check_interval_ms=10)
    client = with_intake(create_app(fast), create_app(fast, kind="intake")).test_client()
    conn = redis.Redis.from_url(redis_url)
    prefill(conn, 2000)
    bound = int(conn.info("memory")["used_memory"] / 0.85)
    conn.config_set("maxmemory", str(bound))
    try:
        assert intake_status(client)["accepting"] is False
        refused = post(client, wrapped(success(new_uuid())))
        assert refused.status_code == 503 and refused.json["error"]["message"].startswith("the queue is full")
        assert refused.headers["Retry-After"] == str(RETRY_AFTER_STALLED_S), "nothing drains yet"
        conn.set("probe", 1)  # Redis itself still takes writes: the intake stopped first

        retry_afters = []
        while conn.info("memory")["used_memory"] > 0.7 * bound:  # the drains' pace, a slice every 0.2 s
            conn.xtrim(DELIVERY_STREAM, maxlen=conn.xlen(DELIVERY_STREAM) - 40)
            time.sleep(0.2)
            answer = post(client, wrapped(success(new_uuid())))
            assert answer.status_code == 503, "between the marks the gate stays closed"
            retry_afters.append(int(answer.headers["Retry-After"]))
        assert all(1 <= s <= 300 for s in retry_afters), retry_afters
        assert retry_afters[-1] < RETRY_AFTER_STALLED_S, "once memory falls, the wait follows its pace"
        status = intake_status(client)
        assert status["accepting"] is False and status["memory_growth_bytes_per_second"] < 0
        assert status["max_memory_bytes"] == bound and status["high_water_bytes"] == round(0.8 * bound)
        assert status["backlog"] == conn.xlen(DELIVERY_STREAM) and status["retry_after_seconds"] >= 1

        while conn.info("memory")["used_memory"] > 0.55 * bound:
            conn.xtrim(DELIVERY_STREAM, maxlen=max(conn.xlen(DELIVERY_STREAM) - 100, 0))
        time.sleep(0.05)
        assert post(client, wrapped(success(new_uuid()))).status_code == 202, "below the low mark: open again"
        assert intake_status(client)["accepting"] is True
        scraped = client.get("/metrics", headers={"Authorization": "Bearer read-token"}).text
        found = {(s.name, tuple(s.labels.items())): s.value
                 for family in text_string_to_metric_families(scraped) for s in family.samples}
        assert found[("captions_intake_accepting", ())] == 1
        assert found[("captions_redis_max_memory_bytes", ())] == bound
        assert 0 < found[("captions_redis_used_memory_bytes", ())] < 0.6 * bound
        assert ("captions_intake_seconds_to_full", ()) in found
        assert found[("captions_webhook_requests_total", (("outcome", "backpressure"),))] >= len(retry_afters) + 1
    finally:
        conn.config_set("maxmemory", "0")


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.timeout(120)
def test_the_dashboard_shows_the_intake_refusing_then_accepting(config, redis_url):
    env = environment(redis_url, config.database_url)
    conn = redis.Redis.from_url(redis_url)
    prefill(conn, 2000)
    bound = int(conn.info("memory")["used_memory"] / 0.85)
    conn.config_set("maxmemory", str(bound))
    server = Gunicorn(env, workers=1, kind="api")
    try:
        server.start()
        with open_tabs() as tabs:
            page = new_tab(tabs)
            page.goto(server.url + "/dashboard")
            page.fill("#token", "read-token")
            page.click("#login-form button[type=submit]")
            page_wait(page, "(document.getElementById('intake-state') || {}).textContent?.startsWith('refused')")
            memory = page.text_content("#intake-memory")
            assert "/" in memory and "refused from 80%" in memory, memory
            assert page.text_content("#intake-backlog").startswith("2,000")
            conn.xtrim(DELIVERY_STREAM, maxlen=0)
            page_wait(page, "document.getElementById('intake-state').textContent === 'accepting'", timeout=30_000)
            assert page.text_content("#intake-backlog") == "0"
    finally:
        server.stop()
        conn.config_set("maxmemory", "0")
