"""DATABASE_READ_URL: the readers read a PostgreSQL streaming replica, the writers write its primary.

On a private primary and its hot standby (tests/pgreplica.py), through the api's
gunicorn: what is written on the primary reaches the readers once the replica
has replayed it; while the replica's replay is paused its lag grows, and
`/api/stats`, `/metrics` and the dashboard say by how much; a submission made
meanwhile is stored on the primary at once.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import pytest
import requests
import sqlalchemy as sa

from store.migrate import upgrade
from store.results import Result
from store.results import apply_results
from store.schema import tasks
from store.schema import utcnow
from tests.chromium import new_tab
from tests.chromium import open_tabs
from tests.chromium import wait_until
from tests.conftest import TOKENS
from tests.pgreplica import replicated  # noqa: F401  (a fixture)
from tests.submitting import data_uri
from tests.support import Gunicorn
from tests.support import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

READ = {"Authorization": f"Bearer {TOKENS['READ_TOKENS']}"}
SUBMIT = {"Authorization": f"Bearer {TOKENS['SUBMIT_TOKENS']}"}
PAUSED_S = 1.5
"""How long the replica's replay stays paused once the primary has written more."""


def store_result(engine: sa.Engine) -> str:
    """A finished task written on the primary through the write path; its taskUUID."""
    task = str(uuid.uuid4())
    with engine.begin() as conn:
        apply_results(conn, [Result(task, "success", utcnow(), text="a lighthouse at dusk", cost=Decimal("0.0019"))])
    return task


def replay(replica_url: str, action: str) -> None:
    engine = sa.create_engine(replica_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"SELECT pg_wal_replay_{action}()"))
    engine.dispose()


@pytest.fixture
def api(replicated, redis_url):  # noqa: F811
    primary, replica = replicated
    upgrade(primary.url())
    env = {"APP_ENV": "development", "REDIS_URL": redis_url, "DATABASE_URL": primary.url(),
           "DATABASE_READ_URL": replica.url(), **TOKENS}
    server = Gunicorn(env, workers=2).start()
    engine = sa.create_engine(primary.url())
    yield server, engine, replica.url()
    engine.dispose()
    server.stop()


def task_status(server: Gunicorn, task: str) -> int:
    return requests.get(f"{server.url}/api/tasks/{task}", headers=READ, timeout=10).status_code


def lag(server: Gunicorn) -> float:
    body = requests.get(f"{server.url}/api/stats", headers=READ, timeout=10).json()
    return body["replica"]["lagSeconds"]


def test_readers_read_the_replica_and_are_told_how_far_behind_it_is(api):
    server, primary, replica_url = api
    first = store_result(primary)
    wait_for(lambda: task_status(server, first) == 200, timeout=10, what="the replica to replay the first task")
    assert lag(server) < PAUSED_S

    replay(replica_url, "pause")
    try:
        second = store_result(primary)
        time.sleep(PAUSED_S)
        assert task_status(server, second) == 404, "the readers read the replica, not the primary"
        assert lag(server) >= PAUSED_S
        scraped = requests.get(f"{server.url}/metrics", headers=READ, timeout=10).text
        gauges = scraped.splitlines()
        gauge = next(line for line in gauges if line.startswith("captions_read_replica_lag_seconds "))
        assert float(gauge.split()[1]) >= PAUSED_S

        # Writes go to the primary, whatever the replica has replayed.
        answer = requests.post(f"{server.url}/api/captions", headers=SUBMIT, timeout=10,
                               json={"images": [data_uri()]})
        assert answer.status_code == 202, answer.text
        queued = answer.json()["tasks"][0]["taskUUID"]
        with primary.connect() as conn:
            assert conn.scalar(sa.select(tasks.c.status).where(tasks.c.task_uuid == queued)) == "queued"
        # and the submitter reads its own tasks from the primary.
        own = requests.get(f"{server.url}/api/captions/{queued}", headers=SUBMIT, timeout=10)
        assert own.status_code == 200 and own.json()["status"] == "queued", own.text
        assert task_status(server, queued) == 404
    finally:
        replay(replica_url, "resume")
    wait_for(lambda: task_status(server, second) == 200, timeout=10, what="the replica to catch up")
    assert lag(server) < PAUSED_S


@pytest.mark.browser
def test_the_dashboard_shows_the_replica_lag(api):
    server, primary, replica_url = api
    store_result(primary)
    with open_tabs() as tabs:
        page = new_tab(tabs)
        page.goto(server.url + "/dashboard")
        page.fill("#token", TOKENS["READ_TOKENS"])
        page.click("#login-form button[type=submit]")
        wait_until(page, "!document.getElementById('replica-card').hidden")
        assert page.text_content("#replica-lag").endswith("s")
        replay(replica_url, "pause")
        try:
            store_result(primary)
            wait_until(page, "parseFloat(document.getElementById('replica-lag').textContent) >= 2")
        finally:
            replay(replica_url, "resume")
