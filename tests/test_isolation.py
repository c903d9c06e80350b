"""The intake never waits for readers: separate processes, reads cancelled by the database, one URL through nginx.

- Every api worker held by a read that waits on a lock: webhooks through the
  intake's gunicorn are still answered in their usual time, and the reads end
  with 503 and Retry-After when READ_TIMEOUT_MS passes, not at the worker timeout.
- SQLite: a read long because its table is big is interrupted by the progress handler.
- PostgreSQL: statement_timeout cancels a long statement, a request's budget bounds
  many short ones, and the write path's engine has no such limit.
- A database outage seen by a reader is a 503 with Retry-After, not a 500.
- The intake's process imports nothing the readers need.
- The local nginx of `make run` routes /webhooks/ to the intake and the rest to the api.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC
from datetime import datetime

import pytest
import requests
import sqlalchemy as sa

from config import Config
from receiver import create_app
from store.db import ReadTimeout
from store.db import engine_for
from store.db import reader_engine_for
from store.schema import UTCDateTime
from tests.conftest import TOKENS
from tests.conftest import clear
from tests.helpers import WEBHOOK
from tests.helpers import new_uuid
from tests.helpers import success
from tests.helpers import wrapped
from tests.submitting import data_uri
from tests.support import ROOT
from tests.support import Service
from tests.support import TcpProxy
from tests.support import WebServers
from tests.support import free_port
from tests.support import wait_for

READ = {"Authorization": f"Bearer {TOKENS['READ_TOKENS']}"}
JSON = {"Content-Type": "application/json"}
READ_TIMEOUT_MS = 4000
API_WORKERS = 2

READER_MODULES = ("receiver.api", "receiver.dashboard", "receiver.submit", "receiver.admin", "receiver.cli",
                  "receiver.images", "store.queries", "store.stats", "store.search", "store.submissions", "PIL")
"""What only the readers use: the query, stats and search code, the dashboard, submission and Pillow."""


def env_for(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    return {"APP_ENV": "development", "REDIS_URL": redis_url, "DATABASE_URL": database_url, **TOKENS, **extra}


def webhook_latencies(url: str, n: int) -> list[float]:
    """Seconds to each 202 of `n` webhook POSTs, one after another."""
    latencies = []
    for _ in range(n):
        started = time.monotonic()
        response = requests.post(f"{url}{WEBHOOK}", params={"token": "hook-new"}, data=wrapped(success(new_uuid())),
                                 headers=JSON, timeout=30)
        latencies.append(time.monotonic() - started)
        assert response.status_code == 202, response.text
    return latencies


class Read(threading.Thread):
    """One GET to the api, timed."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.response: requests.Response | None = None
        self.seconds: float | None = None

    def run(self) -> None:
        started = time.monotonic()
        self.response = requests.get(self.url, headers=READ, timeout=60)
        self.seconds = time.monotonic() - started


def assert_cancelled(response: requests.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    error = response.json()["error"]
    assert error["cause"] == "read_timeout" and "READ_TIMEOUT_MS" in error["message"]


@pytest.mark.postgres
@pytest.mark.slow
def test_webhooks_are_answered_while_every_api_worker_waits_on_a_read(postgres_url, redis_url):
    env = env_for(redis_url, postgres_url, READ_TIMEOUT_MS=str(READ_TIMEOUT_MS), READ_CONCURRENCY=str(API_WORKERS))
    servers = WebServers(env, workers=API_WORKERS).start()
    holder = sa.create_engine(postgres_url)
    try:
        baseline = webhook_latencies(servers.intake.url, 15)
        with holder.connect() as lock, holder.connect() as watch:
            lock.execute(sa.text("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE"))
            reads = [Read(f"{servers.api.url}/api/tasks?limit=5") for _ in range(API_WORKERS)]
            for read in reads:
                read.start()

            def waiting_on_the_lock() -> bool:
                query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                "AND wait_event_type = 'Lock' AND query LIKE '%FROM tasks%'")
                waiting = watch.execute(query).scalar()
                watch.rollback()  # a new snapshot of pg_stat_activity next time
                return waiting == API_WORKERS

            wait_for(waiting_on_the_lock, timeout=10, what="a read waiting on the lock in every api worker")
            during = webhook_latencies(servers.intake.url, 15)
            assert all(read.is_alive() for read in reads), "the webhooks were answered while every read waited"
            for read in reads:
                read.join(timeout=40)
            lock.rollback()
        after = requests.get(f"{servers.api.url}/api/tasks?limit=5", headers=READ, timeout=10)
    finally:
        holder.dispose()
        servers.stop()

    # Within a generous bound of the baseline, and far from the seconds a shared worker would have waited.
    assert statistics.median(during) <= 5 * statistics.median(baseline) + 0.05, (baseline, during)
    assert max(during) < READ_TIMEOUT_MS / 1000 / 2, (baseline, during)
    for read in reads:
        assert_cancelled(read.response)
        assert READ_TIMEOUT_MS / 1000 <= read.seconds < 2 * READ_TIMEOUT_MS / 1000 + 2, read.seconds
    assert after.status_code == 200, "the api answers again once the lock is gone"
    assert "WORKER TIMEOUT" not in servers.output()


def seed_dead_letters(url: str, count: int) -> None:
    """`count` dead letters in one statement (a recursive CTE), so the dashboard's counts have rows to scan."""
    rows = sa.text(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "
        "INSERT INTO dead_letters (delivery_id, item, reason, attempts, created_at) "
        "SELECT '1-' || i, '{}', 'refused by the database', 3, :at FROM n"
    ).bindparams(sa.bindparam("at", type_=UTCDateTime))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(rows, {"count": count, "at": datetime.now(UTC)})
    engine.dispose()


def test_a_long_sqlite_read_is_interrupted_and_answered_503(sqlite_url, redis_url, monkeypatch):
    clear(sqlite_url)
    seed_dead_letters(sqlite_url, 400_000)
    env = env_for(redis_url, sqlite_url)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    patient = create_app(Config.from_env({**os.environ, "READ_TIMEOUT_MS": "60000"})).test_client()
    hasty = create_app(Config.from_env({**os.environ, "READ_TIMEOUT_MS": "1"})).test_client()  # the least allowed

    for path in ("/api/stats", "/api/dead-letters"):
        started = time.monotonic()
        full = patient.get(path, headers=READ)
        took = time.monotonic() - started
        assert full.status_code == 200, full.get_json()
        assert took > 5 * 0.001, f"{path} took {took:.3f}s: not a long read for a 1 ms timeout"
        cut = hasty.get(path, headers=READ)
        assert cut.status_code == 503 and int(cut.headers["Retry-After"]) > 0
        error = cut.get_json()["error"]
        assert error["cause"] == "read_timeout" and "(1 ms)" in error["message"]
    assert hasty.get("/healthz").status_code == 200


@pytest.mark.postgres
def test_postgresql_cancels_a_long_read_and_bounds_a_request_of_many(postgres_url):
    readers, writers = reader_engine_for(postgres_url, 300), engine_for(postgres_url)
    started = time.monotonic()
    with pytest.raises(ReadTimeout), readers.connect() as conn:
        conn.execute(sa.text("SELECT pg_sleep(2)"))
    assert time.monotonic() - started < 1.5, "statement_timeout cancelled the statement"
    with readers.connect() as conn:
        conn.execute(sa.text("SELECT pg_sleep(0.2)"))
        conn.execute(sa.text("SELECT pg_sleep(0.2)"))
        with pytest.raises(ReadTimeout):
            conn.execute(sa.text("SELECT 1"))  # the checkout's budget is spent: refused
    with readers.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1, "a new checkout has a budget of its own"
    with writers.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_sleep(0.5), current_setting('statement_timeout')")).one()[1] == "0"


@pytest.mark.postgres
def test_a_database_outage_seen_by_a_reader_is_503_not_500(postgres_url, redis_url):
    target = sa.engine.make_url(postgres_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432).start()
    url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    client = create_app(Config.from_env(env_for(redis_url, url))).test_client()
    try:
        assert client.get("/api/tasks", headers=READ).status_code == 200
        proxy.cut()
        for path in ("/api/tasks", "/api/stats", f"/api/tasks/{new_uuid()}"):
            down = client.get(path, headers=READ)
            assert down.status_code == 503, (path, down.get_json())
            assert int(down.headers["Retry-After"]) > 0
            assert down.get_json()["error"]["cause"] == "database_unavailable"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.get_json()["checks"]["database"].startswith("unavailable")
        proxy.restore()
        wait_for(lambda: client.get("/api/tasks", headers=READ).status_code == 200, timeout=15,
                 what="the readers to answer again")
    finally:
        proxy.cut()


def imported_by(attribute: str, redis_url: str) -> set[str]:
    """The modules a fresh process holds after building `wsgi.<attribute>`, as gunicorn builds it."""
    code = f"import sys, wsgi; wsgi.{attribute}; print('\\n'.join(sorted(sys.modules)))"
    env = {**os.environ, **env_for(redis_url, "sqlite:///unused.db")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    return set(done.stdout.split())


def test_the_intake_imports_nothing_the_readers_need(redis_url):
    intake, readers = imported_by("intake", redis_url), imported_by("app", redis_url)
    assert "receiver.webhooks" in intake and "receiver.webhooks" not in readers
    reader_only = [m for m in READER_MODULES if m in readers]
    assert {"receiver.api", "receiver.dashboard", "store.queries", "PIL"} <= set(reader_only)
    assert not [m for m in reader_only if m in intake], "the intake imported a module of the readers"


def test_each_app_serves_its_own_surfaces(config):
    intake = create_app(config, kind="intake").test_client()
    readers = create_app(config).test_client()
    body = wrapped(success(new_uuid()))
    assert intake.post(f"{WEBHOOK}?token=hook-new", data=body, content_type="application/json").status_code == 202
    assert readers.post(f"{WEBHOOK}?token=hook-new", data=body, content_type="application/json").status_code == 404
    for path in ("/api/stats", "/api/tasks", "/dashboard", "/metrics", "/api/dead-letters"):
        assert intake.get(path, headers=READ).status_code == 404, path
        assert readers.get(path, headers=READ).status_code == 200, path
    assert intake.get("/readyz").get_json()["checks"] == {"redis": "ok"}, "the intake needs no database"
    assert readers.get("/readyz").get_json()["checks"] == {"redis": "ok", "database": "ok"}
    with pytest.raises(ValueError, match="kind"):
        create_app(config, kind="web")


def load_launcher():
    spec = importlib.util.spec_from_file_location("launch", ROOT / "deploy" / "launch.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    return launch


def answers(url: str, server: Service) -> bool:
    assert server.running(), server.output()
    try:
        return requests.get(url, timeout=2).ok
    except requests.ConnectionError:
        return False


@pytest.mark.slow
def test_the_local_nginx_gives_one_url_for_the_intake_and_the_api(config, tmp_path):
    launch = load_launcher()
    nginx = launch.find_nginx()
    if nginx is None:
        message = "nginx is not installed (Debian/Ubuntu: apt-get install nginx)"
        if os.environ.get("REQUIRE_NGINX") == "1":
            pytest.fail(message + " (REQUIRE_NGINX=1)")
        pytest.skip(message)
    servers = WebServers(env_for(config.redis_url, config.database_url), workers=1).start()
    port = free_port()
    conf = launch.render_nginx(f"127.0.0.1:{port}", f"127.0.0.1:{servers.intake.port}",
                               f"127.0.0.1:{servers.api.port}", tmp_path / "nginx")
    front = Service(launch.nginx_argv(nginx, conf), {}, name="nginx").start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{base}/healthz", front), timeout=15, what="nginx to answer")
        task = new_uuid()
        accepted = requests.post(f"{base}{WEBHOOK}", params={"token": "hook-new"}, data=wrapped(success(task)),
                                 headers=JSON, timeout=10)
        stats = requests.get(f"{base}/api/stats", headers=READ, timeout=10)
        page = requests.get(f"{base}/dashboard", timeout=10)
        direct = requests.post(f"{servers.api.url}{WEBHOOK}", params={"token": "hook-new"},
                               data=wrapped(success(task)), headers=JSON, timeout=10)
    finally:
        front.stop()
        servers.stop()
    assert accepted.status_code == 202 and accepted.json()["status"] == "queued"
    assert stats.status_code == 200 and "byStatus" in stats.json()["tasks"]
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert direct.status_code == 404, "the api itself does not take webhooks: nginx routed the one above"
    intake_log, api_log = servers.intake.output(), servers.api.output()
    assert '"POST /webhooks/runware\\" 202' in intake_log and "fwd=127.0.0.1" in intake_log
    assert '"GET /api/stats\\" 200' in api_log and '"GET /dashboard\\" 200' in api_log
    assert "/api/stats" not in intake_log and "POST /webhooks/runware\\\" 202" not in api_log


def test_api_workers_yield_the_cpu_to_the_intake_workers(sqlite_url, redis_url):
    """The api's workers run at API_NICE (10) above the intake's, so a busy reader cannot take a webhook's core."""
    servers = WebServers(env_for(redis_url, sqlite_url), workers=1).start()
    try:
        base = os.getpriority(os.PRIO_PROCESS, 0)
        intake = [os.getpriority(os.PRIO_PROCESS, pid) for pid in servers.intake.worker_pids()]
        api = [os.getpriority(os.PRIO_PROCESS, pid) for pid in servers.api.worker_pids()]
    finally:
        servers.stop()
    assert intake == [base] and api == [min(base + 10, 19)]


def test_a_submission_waits_for_the_write_lock_beyond_the_read_timeout(sqlite_url, redis_url, monkeypatch):
    """The api's writes (queued submissions) take the write path's patience, not READ_TIMEOUT_MS: a drain holding
    SQLite's write lock longer than the read timeout delays a submission, it does not refuse it."""
    clear(sqlite_url)
    for key, value in env_for(redis_url, sqlite_url).items():
        monkeypatch.setenv(key, value)
    client = create_app(Config.from_env({**os.environ, "READ_TIMEOUT_MS": "200"})).test_client()
    holder = sa.create_engine(sqlite_url, isolation_level="AUTOCOMMIT", connect_args={"check_same_thread": False})
    with holder.connect() as conn:
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, as a drain's transaction holds it
        release = threading.Timer(1.0, lambda: conn.exec_driver_sql("COMMIT"))
        release.start()
        response = client.post("/api/captions", json={"images": [data_uri()]},
                               headers={"Authorization": f"Bearer {TOKENS['SUBMIT_TOKENS']}"})
        release.join()
    holder.dispose()
    assert response.status_code == 202, response.get_json()
